//go:build !unix

package service

import "math"

// openFileLimit is unknown here.
func openFileLimit() uint64 { return math.MaxUint64 }
