// seemoe/core/cpu.hpp — what this machine is: CPU model, vector instruction sets, cache sizes.
//
// Read once per process (cpu_info()), on first use. The matrix-product kernels derive their block
// sizes from the cache sizes here (ops/gemm_kernel.hpp) and pick their instruction set from the
// flags here, so one binary adapts to the machine it runs on; `seemoe bench` prints all of it so
// that figures from different machines can be compared.
//
// Where the cache sizes come from, in order: Linux's /sys/devices/system/cpu/cpu0/cache (what the
// kernel read from the CPU), then sysconf(_SC_LEVEL*_CACHE_SIZE) (glibc's own CPUID decoding,
// which can be wrong in virtual machines: on the AMD EPYC VM of this project it reports a 384 MB
// L3 where sysfs says 32 MB), then defaults typical of a current core (32 KB, 512 KB, 8 MB).
// `cache_source` says which one answered.
//
// Convention: sizes are in bytes; L1 is the data cache of one core, L2 the cache of one core (or
// its share), L3 the last level as a whole.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "common.hpp"

namespace seemoe {

struct CpuInfo {
    std::string model = "unknown";  // e.g. "AMD EPYC", "Intel(R) Xeon(R) ...", "ARM implementer 0x41 part 0xd0c"
    std::string arch;               // "x86-64", "aarch64" or "other"
    bool avx2_fma = false;          // AVX2 and FMA, usable by the OS
    bool avx512f = false;           // AVX-512 Foundation, usable by the OS
    bool neon = false;              // Advanced SIMD (every AArch64 core)
    Index l1d = 0, l2 = 0, l3 = 0;  // bytes
    std::string cache_source;       // "sysfs", "sysconf" or "defaults"
};

namespace detail {

// "48K" / "1024K" / "32M" (sysfs spelling) -> bytes; 0 when unreadable.
inline Index parse_cache_size(const std::string& text) {
    Index value = 0;
    std::size_t i = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') value = value * 10 + (text[i++] - '0');
    if (i < text.size() && (text[i] == 'K' || text[i] == 'k')) value *= 1024;
    if (i < text.size() && (text[i] == 'M' || text[i] == 'm')) value *= 1024 * 1024;
    return value;
}

inline std::string read_first_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    if (in) std::getline(in, line);
    return line;
}

// Data/unified caches of cpu0 from sysfs: index0, index1, ... each with level, type and size.
inline bool caches_from_sysfs(CpuInfo& info) {
    bool found = false;
    for (int index = 0; index < 8; ++index) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
        const std::string level = read_first_line(dir + "level");
        if (level.empty()) break;
        if (read_first_line(dir + "type") == "Instruction") continue;
        const Index size = parse_cache_size(read_first_line(dir + "size"));
        if (size <= 0) continue;
        found = true;
        if (level == "1") info.l1d = size;
        if (level == "2") info.l2 = size;
        if (level == "3") info.l3 = size;
    }
    return found && info.l1d > 0;
}

inline bool caches_from_sysconf(CpuInfo& info) {
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
    const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l1 <= 0) return false;
    info.l1d = l1;
    info.l2 = l2 > 0 ? l2 : 0;
    info.l3 = l3 > 0 ? l3 : 0;
    return true;
#else
    (void)info;
    return false;
#endif
}

// The "model name" line of /proc/cpuinfo (x86); on ARM, which has none, the implementer and part.
inline std::string cpu_model_name() {
    std::ifstream in("/proc/cpuinfo");
    std::string line, implementer, part;
    auto value_of = [](const std::string& l) {
        const std::size_t colon = l.find(':');
        std::size_t start = colon == std::string::npos ? l.size() : colon + 1;
        while (start < l.size() && l[start] == ' ') ++start;
        return l.substr(start);
    };
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) return value_of(line);
        if (line.rfind("CPU implementer", 0) == 0 && implementer.empty()) implementer = value_of(line);
        if (line.rfind("CPU part", 0) == 0 && part.empty()) part = value_of(line);
    }
    if (!implementer.empty()) return "ARM implementer " + implementer + " part " + part;
    return "unknown";
}

inline CpuInfo read_cpu_info() {
    CpuInfo info;
    info.model = cpu_model_name();
#if defined(__x86_64__) || defined(_M_X64)
    info.arch = "x86-64";
#if defined(__GNUC__) || defined(__clang__)
    // The compiler's CPUID check also asks the OS (XGETBV) whether it saves the wide registers.
    __builtin_cpu_init();
    info.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    info.avx512f = __builtin_cpu_supports("avx512f");
#endif
#elif defined(__aarch64__)
    info.arch = "aarch64";
    info.neon = true;
#else
    info.arch = "other";
#endif
    if (caches_from_sysfs(info)) {
        info.cache_source = "sysfs";
    } else if (caches_from_sysconf(info)) {
        info.cache_source = "sysconf";
    } else {
        info.cache_source = "defaults";
    }
    // A level nobody reported gets the typical size, so block sizes stay sensible.
    if (info.l1d <= 0) info.l1d = 32 * 1024;
    if (info.l2 <= 0) info.l2 = 512 * 1024;
    if (info.l3 <= 0) info.l3 = 8 * 1024 * 1024;
    return info;
}

}  // namespace detail

// This machine, read on first use.
inline const CpuInfo& cpu_info() {
    static const CpuInfo info = detail::read_cpu_info();
    return info;
}

}  // namespace seemoe
