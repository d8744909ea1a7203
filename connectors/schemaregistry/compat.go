package schemaregistry

import (
	"errors"
	"fmt"
	"strings"

	"github.com/twmb/avro"
)

// Compatibility levels, as in Confluent Schema Registry.
const (
	CompatNone               = "NONE"
	CompatBackward           = "BACKWARD"
	CompatBackwardTransitive = "BACKWARD_TRANSITIVE"
	CompatForward            = "FORWARD"
	CompatForwardTransitive  = "FORWARD_TRANSITIVE"
	CompatFull               = "FULL"
	CompatFullTransitive     = "FULL_TRANSITIVE"
)

var compatLevels = []string{
	CompatNone, CompatBackward, CompatBackwardTransitive, CompatForward,
	CompatForwardTransitive, CompatFull, CompatFullTransitive,
}

// parseCompat returns the canonical (upper-case) level, or false.
func parseCompat(s string) (string, bool) {
	u := strings.ToUpper(strings.TrimSpace(s))
	for _, l := range compatLevels {
		if u == l {
			return l, true
		}
	}
	return "", false
}

// incompatibility is why a new schema is refused: which old version, which
// direction, and twmb/avro's finding (path of the offending field).
type incompatibility struct {
	oldVersion int
	oldSchema  string
	level      string
	// readerIsNew tells which schema was the reader when the check failed.
	readerIsNew bool
	err         error
}

// checkCompat checks schema against the subject's live versions (oldest
// first) under level and returns the first incompatibility, newest old
// version first, or nil.
func checkCompat(level string, schema *avro.Schema, olds []*version, parse func(string) (*avro.Schema, error)) *incompatibility {
	if level == CompatNone || len(olds) == 0 {
		return nil
	}
	against := olds[len(olds)-1:]
	if strings.HasSuffix(level, "_TRANSITIVE") {
		against = olds
	}
	backward := strings.HasPrefix(level, CompatBackward) || strings.HasPrefix(level, CompatFull)
	forward := strings.HasPrefix(level, CompatForward) || strings.HasPrefix(level, CompatFull)
	for i := len(against) - 1; i >= 0; i-- {
		old := against[i]
		o, err := parse(old.schema)
		if err != nil {
			return &incompatibility{oldVersion: old.version, oldSchema: old.schema, level: level, err: fmt.Errorf("old schema does not parse: %w", err)}
		}
		if backward {
			// New readers must read data written with the old schema.
			if err := avro.CheckCompatibility(o, schema); err != nil {
				return &incompatibility{oldVersion: old.version, oldSchema: old.schema, level: level, readerIsNew: true, err: err}
			}
		}
		if forward {
			// Old readers must read data written with the new schema.
			if err := avro.CheckCompatibility(schema, o); err != nil {
				return &incompatibility{oldVersion: old.version, oldSchema: old.schema, level: level, readerIsNew: false, err: err}
			}
		}
	}
	return nil
}

// errorType maps twmb/avro's finding to Confluent's errorType names.
func errorType(ce *avro.CompatibilityError) string {
	d := ce.Detail
	switch {
	case strings.Contains(d, "no default and is missing"):
		return "READER_FIELD_MISSING_DEFAULT_VALUE"
	case strings.Contains(d, "names do not match"):
		return "NAME_MISMATCH"
	case strings.Contains(d, "fixed sizes differ"):
		return "FIXED_SIZE_MISMATCH"
	case strings.Contains(d, "enum symbol"):
		return "MISSING_ENUM_SYMBOLS"
	case strings.Contains(d, "union"):
		return "MISSING_UNION_BRANCH"
	default:
		return "TYPE_MISMATCH"
	}
}

// messages returns Confluent-style detail entries; the first names the
// offending field.
func (in *incompatibility) messages() []string {
	readerSide, writerSide := "old", "new"
	if in.readerIsNew {
		readerSide, writerSide = "new", "old"
	}
	var ce *avro.CompatibilityError
	var first string
	if errors.As(in.err, &ce) {
		field := ce.Path
		switch errorType(ce) {
		case "READER_FIELD_MISSING_DEFAULT_VALUE":
			first = fmt.Sprintf("{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'The field '%s' at path '%s' in the %s schema has no default value and is missing in the %s schema', additionalInfo:'%s'}",
				lastSegment(field), field, readerSide, writerSide, lastSegment(field))
		default:
			first = fmt.Sprintf("{errorType:'%s', description:'The type at path '%s' in the %s schema (%s) does not match the %s schema (%s): %s', additionalInfo:'%s'}",
				errorType(ce), field, readerSide, ce.ReaderType, writerSide, ce.WriterType, ce.Detail, field)
		}
	} else {
		first = fmt.Sprintf("{errorType:'INCOMPATIBLE', description:'%v'}", in.err)
	}
	return []string{
		first,
		fmt.Sprintf("{oldSchemaVersion: %d}", in.oldVersion),
		fmt.Sprintf("{oldSchema: '%s'}", in.oldSchema),
		fmt.Sprintf("{compatibility: '%s'}", in.level),
	}
}

func lastSegment(path string) string {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[i+1:]
	}
	return path
}
