// A plain net/http service for `cargo xtask bench`: GET /ping answers
// "pong". net/http serves each connection on a goroutine of its own and,
// with keep-alive, starts one more per request (the background read), so
// every request exercises leaktrace's goroutine probes.
// Usage: http_service PORT
package main

import (
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("pong"))
	})
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], nil); err != nil {
		os.Exit(1)
	}
}
