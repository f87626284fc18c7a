package target

import (
	"cmp"
	"context"
	"sync"
)

// inParallel calls fn for 0..n-1, at most width at a time, and returns the
// first error (or ctx's, when it ends first); the calls after an error
// are not made.
func inParallel(ctx context.Context, width, n int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return first != nil }
	for range min(width, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if failed() {
					continue
				}
				if err := fn(i); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return cmp.Or(first, ctx.Err())
}
