package edge

import "sync"

// Buffers of a running pump. A pump borrows them while data flows and gives
// them back before it parks, so an idle session holds none.
const (
	// maxRecordPlaintext is the most plaintext one TLS record carries (RFC
	// 8446 §5.1: 2^14 bytes); one tls.Conn Read returns at most one record.
	maxRecordPlaintext = 16 << 10
	// chunkSize is what a parked-mode pump moves per write: four full
	// records, so that bulk data costs one system call per 64 KiB on each
	// side instead of one per record. On loopback every read(2) and write(2)
	// is a trip through the whole TCP stack, the largest cost of the copy path.
	chunkSize = 4 * maxRecordPlaintext
	// batchSize holds the records crypto/tls makes of one chunk: per record a
	// 5-byte header, the content type and a 16-byte AEAD tag (RFC 8446 §5.2),
	// and toward a TLS backend, whose client config keeps dynamic record
	// sizing, crypto/tls sends smaller records early on, so more of them.
	batchSize = chunkSize + 8<<10
)

// pumpBuffers is what one running pump borrows.
type pumpBuffers struct {
	chunk []byte // the plaintext being moved
	batch []byte // the outgoing TLS records of one chunk; nil unless the destination is TLS
	ahead []byte // read-ahead under crypto/tls; nil unless the source is TLS
}

// bufferPools hands out pump buffers. With parking, pumps run only while data
// flows and large buffers pay off; without it (a goroutine per direction for
// the session's life) each pump keeps its buffer, so it is one record's worth
// and nothing more.
type bufferPools struct {
	parking bool
	chunks  sync.Pool // *[chunkSize]byte
	batches sync.Pool // *[batchSize]byte
	records sync.Pool // *[maxRecordPlaintext]byte, without parking
}

func newBufferPools(parking bool) *bufferPools {
	b := &bufferPools{parking: parking}
	b.chunks.New = func() any { return new([chunkSize]byte) }
	b.batches.New = func() any { return new([batchSize]byte) }
	b.records.New = func() any { return new([maxRecordPlaintext]byte) }
	return b
}

func (b *bufferPools) get(srcTLS, dstTLS bool) pumpBuffers {
	if !b.parking {
		return pumpBuffers{chunk: b.records.Get().(*[maxRecordPlaintext]byte)[:]}
	}
	pb := pumpBuffers{chunk: b.chunks.Get().(*[chunkSize]byte)[:]}
	if dstTLS {
		pb.batch = b.batches.Get().(*[batchSize]byte)[:0]
	}
	if srcTLS {
		pb.ahead = b.chunks.Get().(*[chunkSize]byte)[:0]
	}
	return pb
}

func (b *bufferPools) put(pb pumpBuffers) {
	if !b.parking {
		b.records.Put((*[maxRecordPlaintext]byte)(pb.chunk))
		return
	}
	b.chunks.Put((*[chunkSize]byte)(pb.chunk))
	if pb.batch != nil {
		b.batches.Put((*[batchSize]byte)(pb.batch[:batchSize]))
	}
	if pb.ahead != nil {
		b.chunks.Put((*[chunkSize]byte)(pb.ahead[:chunkSize]))
	}
}
