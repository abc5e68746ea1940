// Package detectors follows the rule.
package detectors

// Alert is what detectors own.
type Alert struct{ ID string }
