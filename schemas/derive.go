package schemas

import (
	"fmt"
	"math/big"
	"time"
)

// Deriving records from CDC rows. The database tables (api/migrations) and
// the records here are both contracts; these functions are the one place
// that maps one onto the other, for the jobs that turn CDC topics into
// customer_360 and LoanUpdatedEvent. Rows are the maps a CDC record's
// before/after decode into (NewWriterSchemaDecoder[map[string]any]):
// decimals *big.Rat, bigint int64, integer int32, timestamptz time.Time,
// NULL nil.

// Customer360FromRows builds the customer_360 row of one customer from the
// current customers row and credit_profiles row. Delinquent is false and
// SourceLSN nil; set them when known (loans, the change's LSN). A customer
// without a credit profile has no customer_360 row yet (an error).
func Customer360FromRows(customer, profile map[string]any) (Customer360, error) {
	var c Customer360
	if profile == nil {
		return c, fmt.Errorf("%w: customer %v has no credit_profiles row", ErrInvalidValue, customer["customer_id"])
	}
	r := rowReader{row: customer, table: "customers"}
	c.CustomerID = r.str("customer_id")
	c.Status = r.str("status")
	c.RiskTier = r.str("risk_tier")
	c.CreditLimit = r.money("credit_limit")
	c.CurrentBalance = r.money("current_balance")
	c.Version = r.i64("version")
	c.UpdatedAt = r.time("updated_at")
	p := rowReader{row: profile, table: "credit_profiles"}
	if id := p.str("customer_id"); r.err == nil && p.err == nil && id != c.CustomerID {
		return c, fmt.Errorf("%w: credit_profiles row of %s paired with customer %s", ErrInvalidValue, id, c.CustomerID)
	}
	c.Score = p.i32("current_score")
	if t := p.time("updated_at"); t.After(c.UpdatedAt) {
		c.UpdatedAt = t
	}
	c.UpdatedAt = c.UpdatedAt.Truncate(time.Millisecond) // timestamp-millis
	if r.err != nil {
		return c, r.err
	}
	return c, p.err
}

// LoanUpdatedEventFromChange builds the LoanUpdatedEvent of one change of
// the loans table from its CDC envelope (a decoded
// cdc.public.loans value). A truncate has no per-loan event (an error).
func LoanUpdatedEventFromChange(change map[string]any) (LoanUpdatedEvent, error) {
	var e LoanUpdatedEvent
	before, _ := change["before"].(map[string]any)
	after, _ := change["after"].(map[string]any)
	switch op, _ := change["op"].(string); op {
	case OpCreate, OpRead:
		e.Change = LoanCreated
	case OpUpdate:
		e.Change = LoanUpdated
	case OpDelete:
		e.Change = LoanDeleted
	default:
		return e, fmt.Errorf("%w: loans change with op %q has no loan event", ErrInvalidValue, op)
	}
	row := after
	if e.Change == LoanDeleted {
		row = before
	}
	if row == nil {
		return e, fmt.Errorf("%w: loans change %s without the row image it needs", ErrInvalidValue, e.Change)
	}
	r := rowReader{row: row, table: "loans"}
	e.LoanID, e.CustomerID, e.LenderID = r.str("loan_id"), r.str("customer_id"), r.str("lender_id")
	e.ApplicationID = r.optStr("application_id")
	e.Amount, e.Currency = r.money("amount"), r.str("currency")
	e.Balance, e.DaysPastDue = r.money("balance"), r.i32("days_past_due")
	if e.Change == LoanDeleted {
		e.Balance, e.DaysPastDue = NewDecimal(0, 2), 0
	} else {
		e.NewStatus = r.optStr("status")
	}
	if e.Change != LoanCreated && before != nil {
		b := rowReader{row: before, table: "loans"}
		e.OldStatus, e.OldBalance = b.optStr("status"), b.optMoney("balance")
		if b.err != nil {
			return e, b.err
		}
	}
	src := rowReader{row: asMap(change["source"]), table: "source"}
	e.EventTime = time.UnixMilli(src.i64("ts_ms")).UTC()
	e.SourceLSN = src.i64("lsn")
	if r.err != nil {
		return e, r.err
	}
	return e, src.err
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// rowReader reads typed columns of a decoded row, keeping the first error.
type rowReader struct {
	row   map[string]any
	table string
	err   error
}

func (r *rowReader) fail(col, want string, v any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s.%s is %T (%v), want %s", ErrInvalidValue, r.table, col, v, v, want)
	}
}

// value returns the column, unwrapping a pointer (nullable long, string).
func (r *rowReader) value(col string) any {
	v := r.row[col]
	switch p := v.(type) {
	case *string:
		if p != nil {
			return *p
		}
		return nil
	case *int64:
		if p != nil {
			return *p
		}
		return nil
	}
	return v
}

func (r *rowReader) str(col string) string {
	s, ok := r.value(col).(string)
	if !ok {
		r.fail(col, "a string", r.row[col])
	}
	return s
}

func (r *rowReader) optStr(col string) *string {
	if r.value(col) == nil {
		return nil
	}
	s := r.str(col)
	return &s
}

func (r *rowReader) i64(col string) int64 {
	switch v := r.value(col).(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	}
	r.fail(col, "a long", r.row[col])
	return 0
}

func (r *rowReader) i32(col string) int32 {
	v, ok := r.value(col).(int32)
	if !ok {
		r.fail(col, "an int", r.row[col])
	}
	return v
}

func (r *rowReader) time(col string) time.Time {
	t, ok := r.value(col).(time.Time)
	if !ok {
		r.fail(col, "a timestamp", r.row[col])
	}
	return t.UTC()
}

func (r *rowReader) money(col string) Decimal {
	switch v := r.value(col).(type) {
	case *big.Rat:
		d, err := DecimalFromRat(v, 2)
		if err != nil && r.err == nil {
			r.err = fmt.Errorf("%w: %s.%s: %w", ErrInvalidValue, r.table, col, err)
		}
		return d
	case Decimal:
		d, err := v.Rescale(2)
		if err != nil && r.err == nil {
			r.err = fmt.Errorf("%w: %s.%s: %w", ErrInvalidValue, r.table, col, err)
		}
		return d
	}
	r.fail(col, "a decimal", r.row[col])
	return Decimal{}
}

func (r *rowReader) optMoney(col string) *Decimal {
	if r.value(col) == nil {
		return nil
	}
	d := r.money(col)
	return &d
}
