package store

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchRetry is the wait before a watch that ended is set up again.
const watchRetry = time.Second

// Watch tells of changes below key (a value or a folder of values) until
// ctx ends or the store is closed: the channel gets a value after each
// change, and after each time the watch was set up (anew), since changes
// may have been missed meanwhile. Values coalesce: a reader that reads
// after several changes sees one. etcd's watch resumes by itself after the
// store was unreachable, from where it stood; when it cannot (the history
// was compacted) it is set up anew.
func (s *Store) Watch(ctx context.Context, key string) <-chan struct{} {
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.run, cancel)
	s.wg.Go(func() {
		defer stop()
		defer cancel()
		for ctx.Err() == nil {
			wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for resp := range s.client.Watch(wctx, s.etcdKey(key), clientv3.WithPrefix(), clientv3.WithCreatedNotify()) {
				if resp.Err() != nil {
					break
				}
				if resp.Created || len(resp.Events) > 0 {
					notify()
				}
			}
			wcancel()
			t := time.NewTimer(watchRetry)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	})
	return changed
}
