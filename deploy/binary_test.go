package deploy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/loanflow/loanflow/internal/testenv"
)

// buildLine is one `go build` of the Dockerfile.
type buildLine struct {
	args []string // after "go build"
	pkg  string   // the package built, e.g. ./cmd/loanflow
	out  string   // its -o path in the image build
}

// dockerfile is the repository's Dockerfile with continuation lines joined.
func dockerfile(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	cur := ""
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		if s := strings.TrimSpace(cur + l); s != "" {
			lines = append(lines, s)
		}
		cur = ""
	}
	return lines
}

// dockerBuildLines extracts every `go build ...` of the Dockerfile's RUN
// instructions.
func dockerBuildLines(t *testing.T) []buildLine {
	t.Helper()
	var out []buildLine
	for _, l := range dockerfile(t) {
		if !strings.HasPrefix(l, "RUN ") {
			continue
		}
		for _, seg := range strings.Split(l, "&&") {
			words := shellWords(seg)
			for i := 0; i+1 < len(words); i++ {
				if words[i] != "go" || words[i+1] != "build" {
					continue
				}
				bl := buildLine{args: words[i+2:]}
				for j, a := range bl.args {
					if a == "-o" && j+1 < len(bl.args) {
						bl.out = bl.args[j+1]
					}
				}
				bl.pkg = bl.args[len(bl.args)-1]
				out = append(out, bl)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("Dockerfile: no `go build` found in its RUN instructions")
	}
	return out
}

// shellWords splits s like a POSIX shell would for simple words and
// quoted strings (no expansions).
func shellWords(s string) []string {
	var out []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

var bins struct {
	once sync.Once
	dir  string
	err  error
}

// builtBinaries builds every binary of the Dockerfile with its own go build
// lines and its environment (CGO_ENABLED=0), into a directory shared by the
// tests of this run, and returns the path of each by package.
func builtBinaries(t *testing.T) map[string]string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the loanflow binary; not in -short mode")
	}
	lines := dockerBuildLines(t)
	root := repoRoot(t)
	bins.once.Do(func() {
		// Under testenv's scratch root, removed when the package's tests end.
		bins.dir = testenv.Dir(t, "bin")
		for _, bl := range lines {
			args := append([]string{"build"}, bl.args...)
			for i := range args {
				if i > 0 && args[i-1] == "-o" {
					args[i] = filepath.Join(bins.dir, filepath.Base(bl.out))
				}
			}
			cmd := exec.Command(goTool(), args...)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
			out, err := cmd.CombinedOutput()
			if err != nil {
				bins.err = fmt.Errorf("Dockerfile build line `go %s` (CGO_ENABLED=0) failed: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	out := map[string]string{}
	for _, bl := range lines {
		out[bl.pkg] = filepath.Join(bins.dir, filepath.Base(bl.out))
	}
	return out
}

// goTool is the go command of this test run.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// loanflowBin is the loanflow binary built as the Dockerfile builds it.
func loanflowBin(t *testing.T) string {
	t.Helper()
	p, ok := builtBinaries(t)["./cmd/loanflow"]
	if !ok {
		t.Fatal("the Dockerfile does not build ./cmd/loanflow")
	}
	return p
}

// cmdHelp is what `loanflow <path> --help` says about a command.
type cmdHelp struct {
	path        []string        // command path, without "loanflow"
	runnable    bool            // has a Run function (a usage line with flags)
	subcommands map[string]bool // available subcommands
	flags       map[string]bool // flag name → takes a value
	text        string
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]cmdHelp{}
	flagRE    = regexp.MustCompile(`^\s*(?:-\w, )?--([\w-]+)(?: (\S+))?\s{2,}`)
	subcmdRE  = regexp.MustCompile(`^\s+([\w-]+)\s{2,}`)
)

// help runs `bin path... --help` and parses cobra's help output.
func help(t *testing.T, bin string, path ...string) cmdHelp {
	t.Helper()
	key := strings.Join(path, " ")
	helpMu.Lock()
	defer helpMu.Unlock()
	if h, ok := helpCache[key]; ok {
		return h
	}
	out, err := exec.Command(bin, append(append([]string(nil), path...), "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("loanflow %s --help: %v\n%s", key, err, out)
	}
	h := cmdHelp{subcommands: map[string]bool{}, flags: map[string]bool{}, text: string(out)}
	section := ""
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasSuffix(l, ":") && !strings.HasPrefix(l, " ") {
			section = l
			continue
		}
		switch section {
		case "Usage:":
			f := strings.Fields(l)
			if len(f) == 0 || f[0] != "loanflow" {
				continue
			}
			var p []string
			for _, w := range f[1:] {
				if strings.HasPrefix(w, "-") || strings.HasPrefix(w, "[") || strings.ToLower(w) != w {
					break
				}
				p = append(p, w)
			}
			if strings.Contains(l, "[command]") {
				if h.path == nil {
					h.path = p
				}
				continue
			}
			h.path, h.runnable = p, true
		case "Available Commands:":
			if m := subcmdRE.FindStringSubmatch(l); m != nil {
				h.subcommands[m[1]] = true
			}
		case "Flags:", "Global Flags:":
			if m := flagRE.FindStringSubmatch(l); m != nil {
				h.flags[m[1]] = m[2] != ""
			}
		}
	}
	helpCache[key] = h
	return h
}
