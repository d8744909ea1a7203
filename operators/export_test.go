package operators

// OnAsyncOpen makes every async operator opened from now on report its
// queue-size accessor to f, until the returned function is called.
func OnAsyncOpen(f func(queueSize func() (length, capacity int))) (restore func()) {
	asyncOpened = f
	return func() { asyncOpened = nil }
}
