// cwgo: Go services for connwatch's integration tests, standard library only. Correct
// services (an HTTP server with a short IdleTimeout and a keep-alive client pool) and the traps
// real Go code falls into (a writer with no deadline, a response body never closed, a read loop
// that takes io.EOF for "no data yet").
//
//	cwgo serve-idle ADDR          HTTP server, IdleTimeout 300 ms
//	cwgo pool URL SECONDS         8 keep-alive clients, pauses around the idle timeout
//	cwgo hold ADDR                TCP server that accepts and holds, never reading
//	cwgo write-forever ADDR       dial, then write 100 bytes every 200 ms, no deadline
//	cwgo leak-body URL            GET, never read or Close the body, then wait
//	cwgo eof-loop ADDR            TCP server whose read loop ignores io.EOF
//
// Each prints "ready" on stdout once it listens or has done its part.
package main

import (
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: cwgo MODE ARG [SECONDS]")
		os.Exit(2)
	}
	mode, arg := os.Args[1], os.Args[2]
	var err error
	switch mode {
	case "serve-idle":
		err = serveIdle(arg)
	case "pool":
		seconds, _ := strconv.Atoi(os.Args[3])
		err = pool(arg, time.Duration(seconds)*time.Second)
	case "hold":
		err = hold(arg)
	case "write-forever":
		err = writeForever(arg)
	case "leak-body":
		err = leakBody(arg)
	case "eof-loop":
		err = eofLoop(arg)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cwgo:", err)
		os.Exit(1)
	}
}

func ready() { fmt.Println("ready") }

func serveIdle(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	server := &http.Server{
		IdleTimeout: 300 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok\n")
		}),
	}
	ready()
	return server.Serve(ln)
}

// pool is a correct client: every body is read and closed, so connections go back to the pool;
// pauses around the server's idle timeout make the server close some of them while pooled.
func pool(url string, d time.Duration) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed))
			for time.Now().Before(deadline) {
				resp, err := client.Get(url)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				time.Sleep(time.Duration(r.Intn(600)) * time.Millisecond)
			}
		}(int64(i))
	}
	wg.Wait()
	client.CloseIdleConnections()
	select {
	case err := <-errs:
		return err
	default:
	}
	ready()
	return nil
}

func hold(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ready()
	var held []net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
}

// writeForever is the trap: no write deadline and no heartbeat, so writes into a dead peer
// keep "succeeding" until the kernel gives up, many minutes later.
func writeForever(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	ready()
	payload := make([]byte, 100)
	for {
		if _, err := c.Write(payload); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leakBody is the trap: the body is neither read to the end nor closed, so the connection
// never returns to the pool and nobody reads the server's FIN: the socket sits in CLOSE_WAIT.
func leakBody(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "status", resp.Status)
	ready()
	select {}
}

// eofLoop is the trap: io.EOF is taken for "nothing yet", so the loop reads on forever.
func eofLoop(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ready()
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if err != nil && err != io.EOF {
			return err
		}
		if n == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
}
