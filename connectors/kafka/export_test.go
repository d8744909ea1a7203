package kafka

// Unprocessed returns the records w has handed to its tasks that they have
// not finished processing: the queues, the chunk waiting to enter one and
// the chunk being processed.
func Unprocessed(w *Worker) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int64
	for _, tr := range w.tasks {
		for _, pos := range tr.positions {
			if h, p := pos.handed.Load(), pos.processed.Load(); h > p {
				n += h - p
			}
		}
	}
	return n
}
