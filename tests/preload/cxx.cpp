// C++ under the preload: exceptions thrown and caught (their objects come from malloc),
// containers, a thread_local whose destructor allocates, and a pthread key destructor that
// allocates and re-arms itself.
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

static pthread_key_t key;
static std::atomic<int> key_destructor_runs{0};
static std::atomic<int> tls_destructor_runs{0};

static void key_destructor(void *value) {
  key_destructor_runs++;
  // Allocate and free during thread teardown.
  char *p = static_cast<char *>(malloc(4096));
  std::memset(p, 1, 4096);
  free(p);
  uintptr_t v = reinterpret_cast<uintptr_t>(value);
  if (v % 2 == 0) {
    // First run: free, then re-arm once with a tagged pointer; glibc calls the destructor
    // again (up to PTHREAD_DESTRUCTOR_ITERATIONS times).
    free(value);
    void *again = malloc(33);  // blocks are 16-aligned: the low bit is free for the tag
    pthread_setspecific(key, reinterpret_cast<char *>(again) + 1);
  } else {
    free(reinterpret_cast<char *>(value) - 1);
  }
}

struct Noisy {
  std::vector<std::string> held;
  Noisy() { held.emplace_back(100, 'n'); }
  ~Noisy() {
    // Allocation inside a thread_local destructor (run from __call_tls_dtors at thread exit).
    std::string s(5000, 'd');
    std::vector<int> v(10000, 7);
    void *p = malloc(100);
    free(p);
    if (s.size() + v.size() == 15000) tls_destructor_runs++;
  }
};
static thread_local Noisy noisy;

static int throw_catch(int rounds) {
  int caught = 0;
  for (int i = 0; i < rounds; i++) {
    try {
      if (i % 2) throw std::runtime_error(std::string(i % 300, 'e'));
      throw std::vector<int>(static_cast<size_t>(i % 50), i);
    } catch (const std::runtime_error &e) {
      caught += std::strlen(e.what()) == static_cast<size_t>(i % 300);
    } catch (const std::vector<int> &v) {
      caught += v.size() == static_cast<size_t>(i % 50);
    }
  }
  return caught;
}

static void worker(int id) {
  noisy.held.emplace_back(static_cast<size_t>(id * 10), 'w');
  void *initial = malloc(64);  // 16-aligned: even, so the destructor re-arms once
  pthread_setspecific(key, initial);
  std::map<int, std::string> m;
  for (int i = 0; i < 2000; i++) m[i] = std::to_string(i * id);
  if (throw_catch(2000) != 2000) std::abort();
}

int main() {
  if (pthread_key_create(&key, key_destructor)) return 3;
  if (throw_catch(20000) != 20000) return 1;
  for (int round = 0; round < 10; round++) {
    std::vector<std::thread> ts;
    for (int i = 0; i < 8; i++) ts.emplace_back(worker, i + 1);
    for (auto &t : ts) t.join();
  }
  auto owned = std::make_unique<std::vector<std::unique_ptr<std::string>>>();
  for (int i = 0; i < 10000; i++) owned->push_back(std::make_unique<std::string>(i % 100, 'u'));
  if (key_destructor_runs != 160 || tls_destructor_runs < 80) {
    std::fprintf(stderr, "destructor runs: key %d, tls %d\n", key_destructor_runs.load(),
                 tls_destructor_runs.load());
    return 1;
  }
  std::printf("c++ ok\n");
  return 0;
}
