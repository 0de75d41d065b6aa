/**
 * Calls a JNI function that mallocs and never frees. Usage: java -Djava.library.path=DIR
 * JniLeak CALLS (loads libjnileak.so).
 */
public class JniLeak {
    static native long leak(int bytes);

    public static void main(String[] args) {
        System.loadLibrary("jnileak");
        int calls = Integer.parseInt(args[0]);
        long sum = 0;
        for (int i = 0; i < calls; i++) {
            sum += leak(4096);
        }
        System.out.println("jni calls " + calls + " checksum " + (sum != 0));
    }
}
