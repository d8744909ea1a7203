// Package money is exact decimal money with two fraction digits, held as an
// int64 count of minor units (cents). It parses and formats the API's
// decimal strings ("1500.00") and PostgreSQL numeric(18,2) text; it never
// goes through float.
package money

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalid is returned for strings that are not a decimal amount with at
// most two fraction digits within numeric(18,2).
var ErrInvalid = errors.New("money: invalid amount")

// MaxUnits is the largest amount numeric(18,2) holds, in minor units.
const MaxUnits = 999_999_999_999_999_999

// Amount is a count of minor units (hundredths).
type Amount int64

// Parse reads "123", "123.4" or "123.45" (optionally with a leading '-').
func Parse(s string) (Amount, error) {
	neg := strings.HasPrefix(s, "-")
	body := strings.TrimPrefix(s, "-")
	whole, frac, hasDot := strings.Cut(body, ".")
	if whole == "" || len(whole) > 16 || len(frac) > 2 || (hasDot && frac == "") {
		return 0, fmt.Errorf("%w: %q (want digits with at most 2 decimals, e.g. \"1500.00\")", ErrInvalid, s)
	}
	if !digits(whole) || !digits(frac) {
		return 0, fmt.Errorf("%w: %q (want digits with at most 2 decimals, e.g. \"1500.00\")", ErrInvalid, s)
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrInvalid, s)
	}
	f := int64(0)
	if frac != "" {
		f, _ = strconv.ParseInt((frac + "0")[:2], 10, 64)
	}
	u := w*100 + f
	if u > MaxUnits {
		return 0, fmt.Errorf("%w: %q exceeds numeric(18,2)", ErrInvalid, s)
	}
	if neg {
		u = -u
	}
	return Amount(u), nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String formats with exactly two fraction digits.
func (a Amount) String() string {
	u := int64(a)
	sign := ""
	if u < 0 {
		sign, u = "-", -u
	}
	return fmt.Sprintf("%s%d.%02d", sign, u/100, u%100)
}

// Add returns a+b, or an error when the sum leaves numeric(18,2).
func (a Amount) Add(b Amount) (Amount, error) {
	s := a + b
	if s > MaxUnits || s < -MaxUnits {
		return 0, fmt.Errorf("%w: overflow", ErrInvalid)
	}
	return s, nil
}
