// seemoe/io/file.hpp — whole files: read one, and replace one atomically.
//
// Every file seemoe writes (checkpoints, training state) goes through
// write_atomically: the bytes go to path + ".tmp", which is renamed over `path` only when it is
// complete and closed. POSIX rename replaces a file in one step, so a reader (or a run killed
// half way) sees the old file or the new one, never a mix. On failure the temp file is removed
// and seemoe::Error names the file and the reason (errno's text).
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <string>
#include <string_view>

#include "../core/common.hpp"

namespace seemoe::io {

namespace detail {

inline std::string errno_text() {
    return errno != 0 ? std::string(std::strerror(errno)) : std::string("unknown error");
}

// Runs write(stream) into path + ".tmp", then renames it over `path`. On any failure the temp
// file is removed, `path` keeps its old contents, and Error is thrown (prefixed with `op`).
template <typename WriteFn>
void write_atomically(const std::string& path, const char* op, WriteFn&& write) {
    const std::string temp = path + ".tmp";
    {
        errno = 0;
        std::ofstream out(temp, std::ios::binary | std::ios::trunc);
        SEEMOE_CHECK(out.is_open(), op, " cannot create '", temp, "': ", errno_text());
        try {
            write(out);
            out.flush();
            SEEMOE_CHECK(out.good(), op, " writing '", temp, "' failed (disk full?): ",
                         errno_text());
            out.close();
            SEEMOE_CHECK(!out.fail(), op, " closing '", temp, "' failed: ", errno_text());
        } catch (...) {
            out.close();
            std::remove(temp.c_str());
            throw;
        }
    }
    // POSIX rename replaces `path` in one step: readers see the old file or the new, never a mix.
    if (std::rename(temp.c_str(), path.c_str()) != 0) {
        const std::string reason = errno_text();
        std::remove(temp.c_str());
        throw Error(seemoe::detail::concat(op, " cannot rename '", temp, "' to '", path, "': ",
                                           reason));
    }
}

}  // namespace detail

// The bytes of a file (binary; no newline translation).
inline std::string read_file(const std::string& path) {
    errno = 0;
    std::ifstream in(path, std::ios::binary);
    SEEMOE_CHECK(in.is_open(), "[read_file] cannot open '", path, "': ", detail::errno_text());
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    SEEMOE_CHECK(size >= 0, "[read_file] cannot tell the size of '", path, "'");
    in.seekg(0, std::ios::beg);
    std::string bytes(static_cast<std::size_t>(size), '\0');
    in.read(bytes.data(), size);
    SEEMOE_CHECK(in.gcount() == size, "[read_file] reading '", path, "' failed after ",
                 in.gcount(), " of ", size, " bytes");
    return bytes;
}

// Replaces `path` with `bytes` atomically (temp file + rename); the temp file never lingers.
inline void write_file_atomic(const std::string& path, std::string_view bytes) {
    detail::write_atomically(path, "[write_file_atomic]", [&](std::ostream& out) {
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    });
}

}  // namespace seemoe::io
