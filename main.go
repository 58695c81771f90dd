// Command chatmail-edge is the TLS/ECH front end of a chatmail relay.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "chatmail-edge: under construction")
	os.Exit(2)
}
