package deploy_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// metricDef is a Prometheus metric the Go sources define.
type metricDef struct {
	name   string
	kind   string          // counter, gauge, histogram, summary
	labels map[string]bool // variable and constant labels
	vec    bool            // has variable labels (a New*Vec)
	where  string          // file:line of its Opts literal
}

// goMetrics finds every metric defined with client_golang in the non-test Go
// files under root: each prometheus.{Counter,Gauge,Histogram,Summary}Opts
// literal, its name (Namespace_Subsystem_Name, resolved through constants,
// local variables and the arguments of the closures or functions that build
// it) and its labels (the New*Vec label list and ConstLabels).
func goMetrics(t *testing.T, root string) map[string]metricDef {
	t.Helper()
	pkgs := map[string][]*ast.File{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor" || n == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		pkgs[filepath.Dir(path)] = append(pkgs[filepath.Dir(path)], f)
		return nil
	})
	if err != nil {
		t.Fatalf("parsing the Go sources: %v", err)
	}
	out := map[string]metricDef{}
	for _, files := range pkgs {
		r := &resolver{files: files}
		for _, f := range files {
			walk(f, nil, func(n ast.Node, stack []ast.Node) {
				lit, ok := n.(*ast.CompositeLit)
				if !ok {
					return
				}
				kind := optsKind(lit.Type)
				if kind == "" {
					return
				}
				for _, m := range r.metrics(lit, kind, stack) {
					m.where = fset.Position(lit.Pos()).String()
					if old, dup := out[m.name]; dup {
						for l := range old.labels {
							m.labels[l] = true
						}
					}
					out[m.name] = m
				}
			})
		}
	}
	return out
}

// optsKind names the metric kind of a prometheus.*Opts type expression.
func optsKind(e ast.Expr) string {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return ""
	}
	if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "prometheus" {
		return ""
	}
	switch sel.Sel.Name {
	case "CounterOpts":
		return "counter"
	case "GaugeOpts":
		return "gauge"
	case "HistogramOpts":
		return "histogram"
	case "SummaryOpts":
		return "summary"
	}
	return ""
}

// walk calls fn for every node under n with the stack of its ancestors
// (outermost first), prefixed by outer.
func walk(n ast.Node, outer []ast.Node, fn func(ast.Node, []ast.Node)) {
	stack := append([]ast.Node(nil), outer...)
	ast.Inspect(n, func(n ast.Node) bool {
		if n == nil {
			stack = stack[:len(stack)-1]
			return true
		}
		fn(n, stack)
		stack = append(stack, n)
		return true
	})
}

// resolver evaluates the string expressions that name metrics and labels
// within one package.
type resolver struct {
	files []*ast.File
	depth int
}

func (r *resolver) metrics(lit *ast.CompositeLit, kind string, stack []ast.Node) []metricDef {
	var ns, sub, name []string
	labels := map[string]bool{}
	ns, sub = []string{""}, []string{""}
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		key, _ := kv.Key.(*ast.Ident)
		if key == nil {
			continue
		}
		switch key.Name {
		case "Namespace":
			ns = r.strings(kv.Value, stack)
		case "Subsystem":
			sub = r.strings(kv.Value, stack)
		case "Name":
			name = r.strings(kv.Value, stack)
		case "ConstLabels":
			for _, l := range r.mapKeys(kv.Value, stack) {
				labels[l] = true
			}
		}
	}
	// The label list of New*Vec(opts, labels).
	vec := false
	if len(stack) > 0 {
		if call, ok := stack[len(stack)-1].(*ast.CallExpr); ok && len(call.Args) == 2 && call.Args[0] == lit {
			vec = true
			for _, l := range r.stringList(call.Args[1], stack) {
				labels[l] = true
			}
		}
	}
	var out []metricDef
	for _, a := range ns {
		for _, b := range sub {
			for _, c := range name {
				var parts []string
				for _, p := range []string{a, b, c} {
					if p != "" {
						parts = append(parts, p)
					}
				}
				ls := map[string]bool{}
				for l := range labels {
					ls[l] = true
				}
				out = append(out, metricDef{name: strings.Join(parts, "_"), kind: kind, labels: ls, vec: vec})
			}
		}
	}
	return out
}

// strings returns the values e can take: literals, concatenations,
// constants, local variables and parameters of closures and functions
// (through their call sites). Unresolvable expressions yield nothing.
func (r *resolver) strings(e ast.Expr, stack []ast.Node) []string {
	r.depth++
	defer func() { r.depth-- }()
	if r.depth > 8 {
		return nil
	}
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind == token.STRING {
			if s, err := strconv.Unquote(e.Value); err == nil {
				return []string{s}
			}
		}
	case *ast.ParenExpr:
		return r.strings(e.X, stack)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return nil
		}
		var out []string
		for _, a := range r.strings(e.X, stack) {
			for _, b := range r.strings(e.Y, stack) {
				out = append(out, a+b)
			}
		}
		return out
	case *ast.Ident:
		var out []string
		for _, v := range r.ident(e.Name, stack) {
			out = append(out, r.strings(v.expr, v.stack)...)
		}
		return out
	}
	return nil
}

// stringList resolves a []string{...} literal, directly or through a
// variable.
func (r *resolver) stringList(e ast.Expr, stack []ast.Node) []string {
	switch e := e.(type) {
	case *ast.CompositeLit:
		var out []string
		for _, el := range e.Elts {
			out = append(out, r.strings(el, stack)...)
		}
		return out
	case *ast.Ident:
		var out []string
		for _, v := range r.ident(e.Name, stack) {
			out = append(out, r.stringList(v.expr, v.stack)...)
		}
		return out
	}
	return nil
}

// mapKeys resolves the keys of a prometheus.Labels{...} literal, directly or
// through a variable.
func (r *resolver) mapKeys(e ast.Expr, stack []ast.Node) []string {
	switch e := e.(type) {
	case *ast.CompositeLit:
		var out []string
		for _, el := range e.Elts {
			if kv, ok := el.(*ast.KeyValueExpr); ok {
				out = append(out, r.strings(kv.Key, stack)...)
			}
		}
		return out
	case *ast.Ident:
		var out []string
		for _, v := range r.ident(e.Name, stack) {
			out = append(out, r.mapKeys(v.expr, v.stack)...)
		}
		return out
	}
	return nil
}

// binding is an expression an identifier may stand for, with the stack of
// the place it appears in.
type binding struct {
	expr  ast.Expr
	stack []ast.Node
}

// ident finds what name may stand for at the bottom of stack: a parameter
// (bound at the call sites of its closure or function), a local variable,
// or a package-level constant or variable.
func (r *resolver) ident(name string, stack []ast.Node) []binding {
	for i := len(stack) - 1; i >= 0; i-- {
		var ft *ast.FuncType
		var body *ast.BlockStmt
		switch f := stack[i].(type) {
		case *ast.FuncLit:
			ft, body = f.Type, f.Body
		case *ast.FuncDecl:
			ft, body = f.Type, f.Body
		default:
			continue
		}
		if idx, ok := paramIndex(ft, name); ok {
			return r.callArgs(stack, i, idx)
		}
		if b := localAssign(body, name, stack[:i+1]); len(b) > 0 {
			return b
		}
	}
	var out []binding
	for _, f := range r.files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, s := range gd.Specs {
				vs, ok := s.(*ast.ValueSpec)
				if !ok {
					continue
				}
				for j, n := range vs.Names {
					if n.Name == name && j < len(vs.Values) {
						out = append(out, binding{vs.Values[j], nil})
					}
				}
			}
		}
	}
	return out
}

// paramIndex is the position of parameter name in ft.
func paramIndex(ft *ast.FuncType, name string) (int, bool) {
	i := 0
	for _, field := range ft.Params.List {
		for _, n := range field.Names {
			if n.Name == name {
				return i, true
			}
			i++
		}
	}
	return 0, false
}

// callArgs returns argument idx of every call of the function at stack[i]:
// a closure assigned to a variable (calls in the enclosing function) or a
// package-level function (calls anywhere in the package).
func (r *resolver) callArgs(stack []ast.Node, i, idx int) []binding {
	var fname string
	var scope ast.Node
	var outer []ast.Node
	switch f := stack[i].(type) {
	case *ast.FuncDecl:
		if f.Recv != nil {
			return nil
		}
		fname = f.Name.Name
	case *ast.FuncLit:
		if i == 0 {
			return nil
		}
		as, ok := stack[i-1].(*ast.AssignStmt)
		if !ok || len(as.Lhs) != 1 {
			return nil
		}
		id, ok := as.Lhs[0].(*ast.Ident)
		if !ok {
			return nil
		}
		fname = id.Name
		for j := i - 1; j >= 0; j-- {
			if _, ok := stack[j].(*ast.BlockStmt); ok {
				scope, outer = stack[j], stack[:j]
				break
			}
		}
	}
	var out []binding
	visit := func(n ast.Node, st []ast.Node) {
		call, ok := n.(*ast.CallExpr)
		if !ok || idx >= len(call.Args) {
			return
		}
		if id, ok := call.Fun.(*ast.Ident); ok && id.Name == fname {
			out = append(out, binding{call.Args[idx], extend(st, call)})
		}
	}
	if scope != nil {
		walk(scope, outer, visit)
		return out
	}
	for _, f := range r.files {
		walk(f, nil, visit)
	}
	return out
}

// extend copies stack and appends n (walk reuses its stack's array).
func extend(stack []ast.Node, n ast.Node) []ast.Node {
	return append(append(make([]ast.Node, 0, len(stack)+1), stack...), n)
}

// localAssign finds `name := expr`, `name = expr` and `var name = expr` in
// body, returning each expr with its stack.
func localAssign(body *ast.BlockStmt, name string, outer []ast.Node) []binding {
	if body == nil {
		return nil
	}
	var out []binding
	walk(body, outer, func(n ast.Node, st []ast.Node) {
		switch s := n.(type) {
		case *ast.AssignStmt:
			if len(s.Lhs) != len(s.Rhs) {
				return
			}
			for j, l := range s.Lhs {
				if id, ok := l.(*ast.Ident); ok && id.Name == name {
					out = append(out, binding{s.Rhs[j], extend(st, s)})
				}
			}
		case *ast.ValueSpec:
			for j, id := range s.Names {
				if id.Name == name && j < len(s.Values) {
					out = append(out, binding{s.Values[j], extend(st, s)})
				}
			}
		}
	})
	return out
}

// TestGoMetricsCatalog pins the extractor on metrics whose definitions use
// each resolution path, so a silent extractor regression cannot make the
// dashboard checks vacuous.
func TestGoMetricsCatalog(t *testing.T) {
	m := goMetrics(t, repoRoot(t))
	want := map[string][]string{
		// Namespace + Subsystem + Name, label list through a local variable.
		"loanflow_engine_records_in_total": {"job", "operator"},
		// Name through a closure parameter, ConstLabels through a variable.
		"loanflow_cdc_replication_lag_bytes": {"reader"},
		// Name literal, label list literal.
		"loanflow_api_requests_total": {"route", "method", "code"},
	}
	for name, labels := range want {
		d, ok := m[name]
		if !ok {
			t.Errorf("metric %s not found in the Go sources (extractor broken?)", name)
			continue
		}
		for _, l := range labels {
			if !d.labels[l] {
				t.Errorf("metric %s (%s): label %q not found; have %v", name, d.where, l, keys(d.labels))
			}
		}
	}
	if m["loanflow_api_rate_limited_total"].vec || !m["loanflow_api_requests_total"].vec || m["loanflow_cdc_replication_lag_bytes"].vec {
		t.Error("vec: New*Vec metrics must be vec, plain ones (even with ConstLabels) not")
	}
	if h := m["loanflow_engine_checkpoint_duration_seconds"]; h.kind != "histogram" {
		t.Errorf("loanflow_engine_checkpoint_duration_seconds: kind %q, want histogram", h.kind)
	}
	if len(m) < 30 {
		t.Errorf("only %d metrics found; want the engine's, CDC's and API's at least", len(m))
	}
	if testing.Verbose() {
		for _, n := range keys(boolSet(m)) {
			t.Logf("%-55s %-9s %v", n, m[n].kind, keys(m[n].labels))
		}
	}
}

func boolSet(m map[string]metricDef) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// repoRoot is the module root (the parent of deploy/).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found above deploy/: %v", err)
	}
	return root
}
