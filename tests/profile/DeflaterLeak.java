import java.util.ArrayList;
import java.util.List;
import java.util.zip.Deflater;

/**
 * Creates many Deflaters, compresses a little with each and keeps them all reachable (so no GC
 * and no Cleaner frees their native zlib state). With the argument "end" each one is ended
 * (deflateEnd frees the native state) right after use; with "leak" it never is.
 * Usage: java DeflaterLeak leak|end COUNT
 */
public class DeflaterLeak {
    public static void main(String[] args) {
        boolean end = args[0].equals("end");
        int count = Integer.parseInt(args[1]);
        byte[] input = new byte[16 << 10];
        for (int i = 0; i < input.length; i++) {
            input[i] = (byte) ("sampalloc ".charAt(i % 10) + i / 1000);
        }
        byte[] out = new byte[32 << 10];
        List<Deflater> kept = new ArrayList<>();
        long compressed = 0;
        for (int i = 0; i < count; i++) {
            Deflater d = new Deflater(Deflater.DEFAULT_COMPRESSION);
            d.setInput(input);
            d.finish();
            while (!d.finished()) {
                compressed += d.deflate(out);
            }
            if (end) {
                d.end();
            }
            kept.add(d);
        }
        System.out.println("deflaters " + kept.size() + " compressed " + compressed);
    }
}
