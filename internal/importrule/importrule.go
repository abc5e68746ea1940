// Package importrule is DESIGN.md's rule of which part of gatewatch may import which,
// written once, and the check of a module's packages against it. Imports run one way,
// along the data flow, so each part can be read and tested alone:
//
//	ingest     imports none of the other parts (it owns Event)
//	detectors  imports ingest (it owns Alert)
//	alerting   imports detectors
//	store      imports ingest, detectors and alerting (it implements their interfaces)
//	replay     imports the parts above, store included
//	cluster    (internal/cluster) scale-out's two stages: imports ingest and detectors
//	pipeline   (internal/pipeline) wires the parts into the live service
//	cmd        wires everything
//
// A part's subpackages, its xxxtest helpers and its internal/ belong to it. Small
// shared pieces that import no part (internal/config, ...) may be imported by every
// part. The rule covers the code that is built, not test code: a test may use another
// part's helper that starts a real server (the kafka receiver's tests use
// ingest/kafkatest's broker).
package importrule

import (
	"fmt"
	"slices"
	"strings"
)

// A Part is a group of packages, by import path below the module, and the parts its
// packages may import besides their own and the shared pieces.
type Part struct {
	Path string
	May  []string
	// Shared marks a small piece every part may import; it imports no part (only
	// what May names, shared pieces themselves).
	Shared bool
}

// Parts is the rule. A package belongs to the part whose path is the longest one that
// is its own path or a parent of it.
var Parts = []Part{
	{Path: "ingest"},
	{Path: "detectors", May: []string{"ingest"}},
	{Path: "alerting", May: []string{"detectors"}},
	{Path: "store", May: []string{"ingest", "detectors", "alerting"}},
	{Path: "replay", May: []string{"ingest", "detectors", "alerting", "store"}},
	{Path: "internal/cluster", May: []string{"ingest", "detectors"}},
	{Path: "internal/pipeline", May: []string{"ingest", "detectors", "alerting", "store", "internal/console", "internal/cluster"}},
	{Path: "cmd", May: []string{"ingest", "detectors", "alerting", "store", "replay", "internal/pipeline", "internal/console", "internal/cluster"}},
	{Path: "internal/console", May: []string{"ingest", "detectors", "alerting", "store"}},
	{Path: "internal/config", Shared: true},
	{Path: "internal/chart", Shared: true},
	{Path: "internal/kafkasasl", May: []string{"internal/config"}, Shared: true},
	{Path: "internal/promtest", Shared: true},
	{Path: "internal/testcert", Shared: true},
	{Path: "internal/importrule", Shared: true},
}

// A Package is one package of the module and the packages it imports, as `go list`
// names them.
type Package struct {
	ImportPath string
	Imports    []string
}

// Check returns every import in pkgs (the packages of the module called module) that
// the rule does not allow, and every package of the module that belongs to no part,
// each as one sentence; nil when everything follows the rule.
func Check(module string, pkgs []Package) []string {
	var out []string
	rel := func(p string) (string, bool) {
		if p == module {
			return "", true
		}
		r, ok := strings.CutPrefix(p, module+"/")
		return r, ok
	}
	for _, pkg := range pkgs {
		from, ok := rel(pkg.ImportPath)
		if !ok {
			continue // a dependency, not ours
		}
		fp := partOf(from)
		if fp == nil {
			out = append(out, fmt.Sprintf("%s belongs to no part: add it to importrule.Parts", from))
			continue
		}
		for _, imp := range pkg.Imports {
			to, ok := rel(imp)
			if !ok {
				continue
			}
			tp := partOf(to)
			switch {
			case tp == nil:
				out = append(out, fmt.Sprintf("%s imports %s, which belongs to no part", from, to))
			case tp == fp, slices.Contains(fp.May, tp.Path):
			case tp.Shared && !fp.Shared:
				// Every part may use the shared pieces.
			default:
				out = append(out, fmt.Sprintf("%s imports %s: %s may import %s", from, to, fp.Path, mayText(fp)))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func partOf(p string) *Part {
	var best *Part
	for i := range Parts {
		q := &Parts[i]
		if (p == q.Path || strings.HasPrefix(p, q.Path+"/")) && (best == nil || len(q.Path) > len(best.Path)) {
			best = q
		}
	}
	return best
}

func mayText(p *Part) string {
	if len(p.May) == 0 {
		return "none of the other parts"
	}
	return "only " + strings.Join(p.May, ", ")
}
