// Package util belongs to no part.
package util

// Nothing is here.
const Nothing = 0
