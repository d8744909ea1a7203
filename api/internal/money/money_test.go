package money

import (
	"errors"
	"testing"
)

func TestParseFormat(t *testing.T) {
	ok := map[string]string{"1500.00": "1500.00", "1500": "1500.00", "0.5": "0.50", "-2.05": "-2.05", "9999999999999999.99": "9999999999999999.99"}
	for in, want := range ok {
		a, err := Parse(in)
		if err != nil || a.String() != want {
			t.Errorf("Parse(%q) = %v, %v; want %s", in, a, err, want)
		}
	}
	for _, in := range []string{"", "1.", ".5", "1.234", "1e3", "abc", "1,00", "+1", "NaN", "99999999999999999"} {
		if _, err := Parse(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) err = %v, want ErrInvalid", in, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"1500.00", "-1", "0.01", "1.2.3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		b, err := Parse(a.String())
		if err != nil || a != b {
			t.Fatalf("round trip %q -> %s -> %v, %v", s, a, b, err)
		}
	})
}
