// Native-memory churn in a JVM (issue 20): threads loop over a GZIP round trip of random data
// (GZIPOutputStream and GZIPInputStream, both closed, so their zlib state is malloc'd and freed
// every time) and Unsafe.allocateMemory/freeMemory of 16 B - 1 MiB blocks (log-uniform sizes),
// kept in a window of 64 blocks a thread so lifetimes overlap. Every block is touched once per
// 4 KiB page, so its pages are really faulted in. Nothing leaks: when the loops stop every
// thread frees its window.
//
//   java -Xms512m -Xmx512m -XX:+AlwaysPreTouch NativeChurn <seconds> <threads>
//
// A loop iteration is one GZIP round trip (1-32 KiB; -Dchurn.gzip=N bytes at most) and one
// window slot, picked at random, freed and refilled. -Dchurn.blocks=N refills N slots an
// iteration; -Dchurn.fifo=true refills the slots in turn (every block then lives 64 refills).
//
// Prints one line at the end, in the workload suite's format (benches/workloads/run.py):
//   RESULT name=jvm-churn ops=<loop iterations> seconds=<s> ops_per_sec=<n> threads=<n>
//          freed_bytes=<bytes given to freeMemory> window_bytes=<bytes live in the windows
//          when the loops stopped; freed last, just before exit>
// tests/jvm_rss.rs runs it under libsampalloc.so; the suite runs it as the jvm-churn row.
// Unsafe (sun.misc.Unsafe, through its theUnsafe field) needs no flag on JDK 17.
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.lang.reflect.Field;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicLong;
import java.util.zip.GZIPInputStream;
import java.util.zip.GZIPOutputStream;

public class NativeChurn {
    static final int WINDOW = 64;
    static final long MIN_BLOCK = 16;
    static final long MAX_BLOCK = 1 << 20;
    static final long PAGE = 4096;
    // Unsafe blocks replaced per loop iteration (one GZIP round trip).
    static final int BLOCKS_PER_OP = Integer.getInteger("churn.blocks", 1);

    static final boolean FIFO = Boolean.getBoolean("churn.fifo");
    static final sun.misc.Unsafe U = unsafe();
    static final AtomicLong OPS = new AtomicLong();
    static final AtomicLong FREED = new AtomicLong();
    static final AtomicLong WINDOW_BYTES = new AtomicLong();
    static final AtomicLong BUSY_END = new AtomicLong(Long.MIN_VALUE);

    static sun.misc.Unsafe unsafe() {
        try {
            Field f = sun.misc.Unsafe.class.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            return (sun.misc.Unsafe) f.get(null);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("no sun.misc.Unsafe", e);
        }
    }

    /// Log-uniform in [MIN_BLOCK, MAX_BLOCK]: as many blocks per doubling of size.
    static long blockSize(SplittableRandom r) {
        int lo = 63 - Long.numberOfLeadingZeros(MIN_BLOCK);
        int hi = 63 - Long.numberOfLeadingZeros(MAX_BLOCK);
        int bits = lo + r.nextInt(hi - lo);
        long base = 1L << bits;
        return base + r.nextLong(base + 1);
    }

    /// A tag for the block at `addr` of `size` bytes, written at its start and checked at free.
    static long tag(long addr, long size) {
        return addr * 0x9E3779B97F4A7C15L ^ size;
    }

    static long allocate(long size) {
        long addr = U.allocateMemory(size);
        for (long off = 0; off < size; off += PAGE) {
            U.putByte(addr + off, (byte) off);
        }
        U.putByte(addr + size - 1, (byte) 1);
        U.putLong(addr, tag(addr, size));
        return addr;
    }

    static void free(long addr, long size) {
        if (U.getLong(addr) != tag(addr, size)) {
            throw new IllegalStateException("block at " + addr + " of " + size + " bytes was overwritten");
        }
        U.freeMemory(addr);
        FREED.addAndGet(size);
    }

    static void gzipRoundTrip(SplittableRandom r, byte[] buf) throws Exception {
        int n = 1024 + r.nextInt(buf.length - 1024);
        for (int i = 0; i < n; i += 8) {
            long v = r.nextLong();
            for (int j = 0; j < 8 && i + j < n; j++) {
                buf[i + j] = (byte) (v >>> (8 * j));
            }
        }
        ByteArrayOutputStream bo = new ByteArrayOutputStream(n + 64);
        try (GZIPOutputStream g = new GZIPOutputStream(bo)) {
            g.write(buf, 0, n);
        }
        byte[] back;
        try (GZIPInputStream g = new GZIPInputStream(new ByteArrayInputStream(bo.toByteArray()))) {
            back = g.readAllBytes();
        }
        if (!Arrays.equals(buf, 0, n, back, 0, back.length)) {
            throw new IllegalStateException("gzip round trip differs");
        }
    }

    static void work(int seed, long deadline) throws Exception {
        SplittableRandom r = new SplittableRandom(0x5EED0000L + seed);
        long[] addr = new long[WINDOW];
        long[] size = new long[WINDOW];
        byte[] buf = new byte[Integer.getInteger("churn.gzip", 32 * 1024)];
        long ops = 0;
        try {
            while (System.nanoTime() < deadline) {
                gzipRoundTrip(r, buf);
                for (int k = 0; k < BLOCKS_PER_OP; k++) {
                    int slot = FIFO ? (int) ((ops * BLOCKS_PER_OP + k) % WINDOW) : r.nextInt(WINDOW);
                    if (addr[slot] != 0) {
                        free(addr[slot], size[slot]);
                    }
                    size[slot] = blockSize(r);
                    addr[slot] = allocate(size[slot]);
                }
                ops++;
            }
        } finally {
            long live = 0;
            for (int slot = 0; slot < WINDOW; slot++) {
                if (addr[slot] != 0) {
                    live += size[slot];
                    free(addr[slot], size[slot]);
                    addr[slot] = 0;
                }
            }
            WINDOW_BYTES.addAndGet(live);
            OPS.addAndGet(ops);
            BUSY_END.accumulateAndGet(System.nanoTime(), Math::max);
        }
    }

    public static void main(String[] args) throws Exception {
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : 10;
        int threads = args.length > 1 ? Integer.parseInt(args[1]) : 16;
        long start = System.nanoTime();
        long deadline = start + (long) (seconds * 1e9);
        Thread[] ts = new Thread[threads];
        Throwable[] failed = new Throwable[1];
        for (int t = 0; t < threads; t++) {
            final int seed = t;
            ts[t] = new Thread(() -> {
                try {
                    work(seed, deadline);
                } catch (Throwable e) {
                    synchronized (failed) {
                        if (failed[0] == null) failed[0] = e;
                    }
                }
            }, "churn-" + t);
            ts[t].start();
        }
        for (Thread t : ts) {
            t.join();
        }
        if (failed[0] != null) {
            throw new IllegalStateException("a worker failed", failed[0]);
        }
        double elapsed = (BUSY_END.get() - start) / 1e9;
        long ops = OPS.get();
        System.out.printf("RESULT name=jvm-churn ops=%d seconds=%.3f ops_per_sec=%.1f threads=%d freed_bytes=%d"
                + " window_bytes=%d%n",
                ops, elapsed, ops / elapsed, threads, FREED.get(), WINDOW_BYTES.get());
    }
}
