package buildinfo

import (
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Info is what the binary knows of its build.
type Info struct {
	Version, Revision, GoVersion string
}

var read = sync.OnceValue(func() Info {
	info := Info{Version: "(devel)", Revision: "unknown", GoVersion: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	info.GoVersion = bi.GoVersion
	if bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			info.Revision = s.Value
		}
	}
	return info
})

// Read returns the binary's build information.
func Read() Info { return read() }

// Collector is the loanflow_build_info gauge, always 1.
func Collector() prometheus.Collector {
	i := Read()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "loanflow_build_info",
		Help: "Build of the running binary (always 1): version, VCS revision, Go version."}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(i.Version, i.Revision, i.GoVersion).Set(1)
	return g
}
