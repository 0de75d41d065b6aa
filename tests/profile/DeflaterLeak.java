import java.util.ArrayList;
import java.util.List;
import java.util.zip.Deflater;

/**
 * Creates many Deflaters, compresses a little with each and keeps them all reachable (so no GC
 * and no Cleaner frees their native zlib state). With the argument "end" each one is ended
 * (deflateEnd frees the native state) right after use; with "leak" it never is.
 * Usage: java DeflaterLeak leak|end COUNT [WARMUP]
 * WARMUP Deflaters are first made and ended (none left behind), so that the JIT has compiled
 * `compress` before the COUNT that matter, as in a service that has run for a while.
 */
public class DeflaterLeak {
    public static void main(String[] args) {
        boolean end = args[0].equals("end");
        int count = Integer.parseInt(args[1]);
        int warmup = args.length > 2 ? Integer.parseInt(args[2]) : 0;
        byte[] input = new byte[16 << 10];
        for (int i = 0; i < input.length; i++) {
            input[i] = (byte) ("sampalloc ".charAt(i % 10) + i / 1000);
        }
        byte[] out = new byte[32 << 10];
        for (int i = 0; i < warmup; i++) {
            compress(input, out).end();
        }
        List<Deflater> kept = new ArrayList<>();
        long compressed = 0;
        for (int i = 0; i < count; i++) {
            Deflater d = compress(input, out);
            compressed += d.getBytesWritten();
            if (end) {
                d.end();
            }
            kept.add(d);
        }
        System.out.println("deflaters " + kept.size() + " compressed " + compressed);
    }

    /**
     * A new Deflater that has compressed `input` into `out`. Called once per Deflater, so the
     * JIT compiles it after a few hundred calls and a perf map names it (main itself stays
     * interpreted).
     */
    static Deflater compress(byte[] input, byte[] out) {
        Deflater d = new Deflater(Deflater.DEFAULT_COMPRESSION);
        d.setInput(input);
        d.finish();
        while (!d.finished()) {
            d.deflate(out);
        }
        return d;
    }
}
