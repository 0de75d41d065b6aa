// C++ operator new and delete under the preload, every form: served by libsampalloc.so itself
// (not libstdc++'s, which would call malloc), aligned as asked, sized deletes with right and
// wrong sizes, and the out-of-memory rules: the new-handler is called, then std::bad_alloc
// thrown (nothrow forms return null). With an argument, a misuse that must abort:
// delete-interior (a pointer inside a block), delete-twice.
#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <set>
#include <string>
#include <vector>

static int failures = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "FAILED line %d: %s\n", __LINE__, #cond); \
      failures++;                                                      \
    }                                                                  \
  } while (0)

// The object file that defines the function at `f`.
static std::string defined_in(void *f) {
  Dl_info info;
  if (!dladdr(f, &info) || !info.dli_fname) return "?";
  return info.dli_fname;
}

static bool ours(void *f) { return defined_in(f).find("libsampalloc") != std::string::npos; }

// Volatile, so the compiler cannot fold a new/delete pair away or see the huge sizes.
static volatile size_t huge_size = SIZE_MAX / 4;
static int handler_calls = 0;
static void handler() {
  if (++handler_calls == 3) std::set_new_handler(nullptr);
}

struct alignas(256) Wide {
  char bytes[300];
};

static void fill_check(void *p, size_t n, int tag) {
  std::memset(p, tag, n);
  const unsigned char *b = static_cast<unsigned char *>(p);
  CHECK(b[0] == static_cast<unsigned char>(tag) && b[n - 1] == static_cast<unsigned char>(tag));
}

int main(int argc, char **argv) {
  if (argc > 1) {
    char *p = new char[100];
    std::printf("ptr %p\n", static_cast<void *>(std::strcmp(argv[1], "delete-interior") ? p : p + 16));
    std::fflush(stdout);
    if (!std::strcmp(argv[1], "delete-interior")) ::operator delete(p + 16, size_t(84));
    if (!std::strcmp(argv[1], "delete-twice")) {
      ::operator delete[](p);
      ::operator delete[](p);
    }
    std::printf("survived\n");
    return 0;
  }

  // Every form is the preload's.
  CHECK(ours(reinterpret_cast<void *>(static_cast<void *(*)(size_t)>(&::operator new))));
  CHECK(ours(reinterpret_cast<void *>(static_cast<void *(*)(size_t)>(&::operator new[]))));
  CHECK(ours(reinterpret_cast<void *>(
      static_cast<void *(*)(size_t, std::align_val_t)>(&::operator new))));
  CHECK(ours(reinterpret_cast<void *>(
      static_cast<void *(*)(size_t, const std::nothrow_t &) noexcept>(&::operator new))));
  CHECK(ours(reinterpret_cast<void *>(static_cast<void (*)(void *) noexcept>(&::operator delete))));
  CHECK(ours(reinterpret_cast<void *>(
      static_cast<void (*)(void *, size_t) noexcept>(&::operator delete))));
  CHECK(ours(reinterpret_cast<void *>(
      static_cast<void (*)(void *, std::align_val_t) noexcept>(&::operator delete[]))));

  // Plain, array and nothrow forms, with sized and unsized deletes.
  for (size_t n = 1; n < 70000; n = n * 3 / 2 + 1) {
    void *a = ::operator new(n);
    void *b = ::operator new[](n);
    void *c = ::operator new(n, std::nothrow);
    void *d = ::operator new[](n, std::nothrow);
    CHECK(a && b && c && d);
    CHECK(reinterpret_cast<uintptr_t>(a) % 16 == 0);
    fill_check(a, n, 1);
    fill_check(b, n, 2);
    fill_check(c, n, 3);
    fill_check(d, n, 4);
    ::operator delete(a, n);
    ::operator delete[](b, n);
    ::operator delete(c, std::nothrow);
    ::operator delete[](d);
  }
  // Zero bytes: distinct pointers.
  void *z1 = ::operator new(0), *z2 = ::operator new(0);
  CHECK(z1 && z2 && z1 != z2);
  ::operator delete(z1, size_t(0));
  ::operator delete(z2);

  // Over-aligned types and explicit alignments, sized and unsized deletes.
  std::vector<Wide *> wides;
  for (int i = 0; i < 100; i++) {
    wides.push_back(new Wide);
    CHECK(reinterpret_cast<uintptr_t>(wides.back()) % 256 == 0);
    fill_check(wides.back()->bytes, sizeof wides.back()->bytes, i);
  }
  for (Wide *w : wides) delete w;  // sized, aligned delete
  Wide *array = new Wide[7];
  CHECK(reinterpret_cast<uintptr_t>(array) % 256 == 0);
  delete[] array;
  for (size_t align = 32; align <= (1u << 20); align *= 4) {
    void *p = ::operator new(1000, std::align_val_t(align));
    void *q = ::operator new[](align + 5, std::align_val_t(align), std::nothrow);
    CHECK(p && q && reinterpret_cast<uintptr_t>(p) % align == 0 &&
          reinterpret_cast<uintptr_t>(q) % align == 0);
    fill_check(p, 1000, 5);
    fill_check(q, align + 5, 6);
    ::operator delete(p, size_t(1000), std::align_val_t(align));
    ::operator delete[](q, std::align_val_t(align), std::nothrow);
  }

  // A wrong size to a sized delete frees the block as its own class: a 100-byte block is
  // never handed out for 3,000 bytes after it.
  void *small = ::operator new(100);
  ::operator delete(small, size_t(3000));
  std::vector<void *> big;
  for (int i = 0; i < 64; i++) {
    big.push_back(::operator new(3000));
    CHECK(big.back() != small);
    fill_check(big.back(), 3000, 7);
  }
  for (void *p : big) ::operator delete(p, size_t(3000));
  std::set<void *> smalls;
  for (int i = 0; i < 64; i++) smalls.insert(::operator new(100));
  CHECK(smalls.count(small) == 1);
  for (void *p : smalls) ::operator delete(p);

  // Out of memory: nothrow forms return null; the others call the new-handler until it
  // gives up, then throw std::bad_alloc.
  CHECK(::operator new(huge_size, std::nothrow) == nullptr);
  CHECK(::operator new[](huge_size, std::align_val_t(64), std::nothrow) == nullptr);
  int thrown = 0;
  try {
    (void)::operator new(huge_size);
  } catch (const std::bad_alloc &) {
    thrown++;
  }
  try {
    (void)::operator new[](huge_size, std::align_val_t(4096));
  } catch (const std::bad_alloc &) {
    thrown++;
  }
  std::set_new_handler(handler);
  try {
    (void)::operator new[](huge_size);
  } catch (const std::bad_alloc &) {
    thrown++;
  }
  CHECK(thrown == 3);
  CHECK(handler_calls == 3);

  // Containers and strings, as programs use new and delete.
  std::vector<std::string> words;
  for (int i = 0; i < 20000; i++) words.push_back(std::string(static_cast<size_t>(i % 200), 'w'));
  size_t total = 0;
  for (const std::string &w : words) total += w.size();
  CHECK(total == 20000 / 200 * (199 * 200 / 2));

  if (failures) return 1;
  std::printf("new ok\n");
  return 0;
}
