// A multi-threaded java.util.zip workload: Deflater/Inflater and GZIP and ZIP streams in
// several threads, checking every round trip. Their zlib state is native memory (malloc).
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.zip.Deflater;
import java.util.zip.GZIPInputStream;
import java.util.zip.GZIPOutputStream;
import java.util.zip.Inflater;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;
import java.util.zip.ZipOutputStream;

public class Zip {
    static byte[] data(Random r, int n) {
        byte[] d = new byte[n];
        for (int i = 0; i < n; i++) {
            d[i] = (byte) ('a' + r.nextInt(8));
        }
        return d;
    }

    static byte[] deflate(byte[] in, int level) {
        Deflater d = new Deflater(level);
        d.setInput(in);
        d.finish();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buf = new byte[8192];
        while (!d.finished()) {
            out.write(buf, 0, d.deflate(buf));
        }
        d.end();
        return out.toByteArray();
    }

    static byte[] inflate(byte[] in, int size) throws Exception {
        Inflater inf = new Inflater();
        inf.setInput(in);
        byte[] out = new byte[size];
        int n = 0;
        while (!inf.finished() && n < size) {
            n += inf.inflate(out, n, size - n);
        }
        inf.end();
        if (n != size) throw new IllegalStateException("inflated " + n + " of " + size);
        return out;
    }

    static long work(int seed) throws Exception {
        Random r = new Random(seed);
        long total = 0;
        for (int i = 0; i < 60; i++) {
            byte[] d = data(r, 1000 + r.nextInt(60000));
            byte[] z = deflate(d, 1 + i % 9);
            if (!Arrays.equals(d, inflate(z, d.length))) throw new IllegalStateException("deflate");
            total += z.length;

            ByteArrayOutputStream bo = new ByteArrayOutputStream();
            try (GZIPOutputStream g = new GZIPOutputStream(bo)) {
                g.write(d);
            }
            byte[] back;
            try (GZIPInputStream g = new GZIPInputStream(new ByteArrayInputStream(bo.toByteArray()))) {
                back = g.readAllBytes();
            }
            if (!Arrays.equals(d, back)) throw new IllegalStateException("gzip");
        }
        ByteArrayOutputStream zo = new ByteArrayOutputStream();
        List<byte[]> entries = new ArrayList<>();
        try (ZipOutputStream z = new ZipOutputStream(zo)) {
            for (int e = 0; e < 20; e++) {
                byte[] d = data(r, 100 + r.nextInt(20000));
                entries.add(d);
                z.putNextEntry(new ZipEntry("entry" + e));
                z.write(d);
                z.closeEntry();
            }
        }
        try (ZipInputStream z = new ZipInputStream(new ByteArrayInputStream(zo.toByteArray()))) {
            for (int e = 0; e < 20; e++) {
                ZipEntry entry = z.getNextEntry();
                if (entry == null || !entry.getName().equals("entry" + e)) throw new IllegalStateException("zip entry");
                if (!Arrays.equals(entries.get(e), z.readAllBytes())) throw new IllegalStateException("zip data");
            }
        }
        return total;
    }

    public static void main(String[] args) throws Exception {
        int threads = 4;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        List<Future<Long>> results = new ArrayList<>();
        for (int t = 0; t < threads * 2; t++) {
            final int seed = t;
            results.add(pool.submit(() -> work(seed)));
        }
        long total = 0;
        for (Future<Long> f : results) {
            total += f.get();
        }
        pool.shutdown();
        System.out.println("zip ok " + total);
    }
}
