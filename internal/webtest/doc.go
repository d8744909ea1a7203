// Package webtest drives Loanflow's web pages (the lender dashboard and
// the operator page) in headless Chromium for tests, through the DevTools
// protocol (chromedp).
//
// New starts one browser per test; Tab opens a tab in its own browser
// context, so a lender's and an operator's sessions can run side by side
// without sharing cookies. Waits (WaitFor) are conditions evaluated in the
// page, bounded by WaitTimeout as a guard against a stuck page, never a
// speed assertion.
//
// Layout is checked by geometry rather than by comparing screenshots
// pixel by pixel, which breaks with fonts and rendering: Layout and
// CheckGrid measure a page's cards at a given viewport (overlaps, content
// overflowing a card, cards leaving the viewport, a page that scrolls
// sideways, and how many columns the cards form). Screenshot saves a PNG
// as an artifact for a person to look at.
//
// Chromium comes from Debian's chromium package (make deps). Without it a
// test fails under CI=true and is skipped otherwise, saying how to install
// it.
//
// The tests of this package run the whole local stack (internal/devstack:
// PostgreSQL, Redis, a Kafka-protocol broker, the schema registry, the
// bureau simulator, the jobs and the API) and check both pages against it.
package webtest
