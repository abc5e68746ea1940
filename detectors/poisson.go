package detectors

import "gonum.org/v1/gonum/mathext"

// poissonTail returns P(X ≥ k) for X ~ Poisson(lambda).
//
// distuv.Poisson.Survival computes it as 1 - CDF, which rounds to 0 for the tails
// this detector cares about (1e-6 and far below). The same tail is the regularized
// lower incomplete gamma function P(k, lambda), which gonum evaluates directly to full
// relative precision. A never-seen route has lambda = 0: any request is impossible
// under that baseline, so the tail is exactly 0.
func poissonTail(k int, lambda float64) float64 {
	switch {
	case k <= 0:
		return 1
	case lambda <= 0:
		return 0
	}
	return mathext.GammaIncReg(float64(k), lambda)
}
