package webtest

import (
	"context"
	"fmt"
	"testing"
)

// Grid is the geometry of a set of elements (cards) as laid out in the
// current viewport.
type Grid struct {
	Items    int      `json:"items"`
	Columns  int      `json:"columns"`  // distinct left edges
	Rows     int      `json:"rows"`     // distinct top edges
	Problems []string `json:"problems"` // overlaps, overflow, empty items
}

// layoutJS measures the elements matching a selector: every one must have
// a size, lie inside the viewport, hold its content (no overflow) and
// overlap no other; the page must not scroll sideways. Edges are compared
// to the pixel, so fonts and load do not matter; only the layout does.
const layoutJS = `((sel) => {
  const problems = [];
  const vw = document.documentElement.clientWidth;
  const sw = document.documentElement.scrollWidth;
  if (sw > vw + 1) problems.push("the page is wider than the viewport: " + sw + " > " + vw);
  const items = [...document.querySelectorAll(sel)];
  const rects = items.map(e => e.getBoundingClientRect());
  const name = i => sel + "[" + i + "]" + (items[i].dataset.job ? " (" + items[i].dataset.job + ")" : "");
  rects.forEach((r, i) => {
    const e = items[i];
    if (r.width < 1 || r.height < 1) problems.push(name(i) + " has no size");
    if (r.left < -0.5 || r.right > vw + 0.5) problems.push(name(i) + " leaves the viewport: " + r.left.toFixed(0) + ".." + r.right.toFixed(0) + " of " + vw);
    if (e.scrollWidth > e.clientWidth + 1) problems.push(name(i) + " content overflows it: " + e.scrollWidth + " > " + e.clientWidth);
    for (let k = i + 1; k < rects.length; k++) {
      const q = rects[k];
      if (r.left < q.right - 0.5 && q.left < r.right - 0.5 && r.top < q.bottom - 0.5 && q.top < r.bottom - 0.5) problems.push(name(i) + " overlaps " + name(k));
    }
  });
  return {items: items.length, columns: new Set(rects.map(r => Math.round(r.left))).size,
    rows: new Set(rects.map(r => Math.round(r.top))).size, problems};
})(%q)`

// Layout measures the elements matching the CSS selector.
func Layout(t testing.TB, ctx context.Context, sel string) Grid {
	t.Helper()
	var g Grid
	Eval(t, ctx, fmt.Sprintf(layoutJS, sel), &g)
	return g
}

// CheckGrid measures sel at the viewport w x h and fails the test when the
// elements overlap or overflow, or are not laid out in columns columns
// (0: any number above one) with at least one item each.
func CheckGrid(t testing.TB, ctx context.Context, sel string, w, h int64, columns int) Grid {
	t.Helper()
	Run(t, ctx, fmt.Sprintf("resizing to %dx%d", w, h), Viewport(w, h))
	g := Layout(t, ctx, sel)
	switch {
	case g.Items == 0:
		t.Errorf("%dx%d: no %s on the page", w, h, sel)
	case len(g.Problems) > 0:
		t.Errorf("%dx%d: %s laid out badly: %q", w, h, sel, g.Problems)
	case columns == 0 && g.Columns < 2:
		t.Errorf("%dx%d: %d %s in %d column(s), want a grid", w, h, g.Items, sel, g.Columns)
	case columns > 0 && g.Columns != columns:
		t.Errorf("%dx%d: %d %s in %d column(s), want %d", w, h, g.Items, sel, g.Columns, columns)
	}
	return g
}
