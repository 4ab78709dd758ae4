package frontend

import "sync"

// flights shares the loads of one key among concurrent reads, as
// singleflight does, with one difference that keeps reads linearizable: a
// read never shares a load that began before the read did. That load may
// have read the key's row before a replacement that was acknowledged
// before this read began (through any frontend), so its answer would be
// stale for this read. A read that finds a load running joins the next one
// instead, which starts when the running one ends; reads that arrive while
// it waits share it. So concurrent misses of one key make at most two
// loads at a time, each read's after the read began.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight // the newest flight of each key with one
}

type flight struct {
	prev    *flight // the flight this one starts after (nil: none)
	started bool    // guarded by flights.mu; once set, no read joins
	joined  int     // reads that joined it besides the one that made it; guarded by flights.mu
	done    chan struct{}
	img     Image
	err     error
}

// do returns the result of a call of load that begins after do was called,
// sharing it with the other reads of key that can.
func (fs *flights) do(key string, load func() (Image, error)) (Image, error) {
	fs.mu.Lock()
	if fs.m == nil {
		fs.m = map[string]*flight{}
	}
	f, ok := fs.m[key]
	if ok && !f.started {
		f.joined++
		fs.mu.Unlock() // join a load that has not begun yet
		<-f.done
		return f.img, f.err
	}
	f = &flight{prev: f, done: make(chan struct{})}
	fs.m[key] = f
	fs.mu.Unlock()

	if f.prev != nil {
		<-f.prev.done
		f.prev = nil
	}
	fs.mu.Lock()
	f.started = true
	fs.mu.Unlock()
	f.img, f.err = load()
	fs.mu.Lock()
	if fs.m[key] == f {
		delete(fs.m, key)
	}
	fs.mu.Unlock()
	close(f.done)
	return f.img, f.err
}
