// seemoe/io/file.hpp — whole files: read one, and replace one atomically.
//
// Every file seemoe reads goes through InputFile: it opens only regular files. The open uses
// O_NONBLOCK, so a FIFO, a device or a socket named by mistake is refused after fstat instead of
// blocking the program forever (or reading /dev/zero until memory runs out); a directory is
// refused too. read_file takes a byte limit, checked against the size before anything is read.
//
// Every file seemoe writes (checkpoints, training state) goes through
// write_atomically: the bytes go to path + ".tmp", which is fsync'd and renamed over `path` only
// when it is complete and closed, and the folder is fsync'd after the rename. POSIX rename replaces a file in one step, so a reader (or a run killed
// half way) sees the old file or the new one, never a mix. On failure the temp file is removed
// and seemoe::Error names the file and the reason (errno's text).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <cstring>
#include <filesystem>
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

// fsyncs `path`: a file's bytes, or a folder's entries (a rename inside it), reach the disk.
inline void sync_path(const std::string& path, const char* op) {
    errno = 0;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    SEEMOE_CHECK(fd >= 0, op, " cannot open '", path, "' to sync it: ", errno_text());
    const int rc = ::fsync(fd);
    const std::string reason = errno_text();
    ::close(fd);
    SEEMOE_CHECK(rc == 0, op, " fsync of '", path, "' failed: ", reason);
}

// The folder holding `path` ("." for a bare name), fsync'd after a rename in it.
inline void sync_parent(const std::string& path, const char* op) {
    const std::string parent = std::filesystem::path(path).parent_path().string();
    sync_path(parent.empty() ? "." : parent, op);
}

inline void sync_directory(const std::string& dir, const char* op) { sync_path(dir.empty() ? "." : dir, op); }

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
            sync_path(temp, op);  // the bytes are on disk before the rename makes them visible
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
    sync_parent(path, op);  // and the rename itself survives a power cut
}

// "a directory", "a FIFO (named pipe)", ... for the file type bits of st_mode.
inline const char* file_type_name(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "a special file";
}

}  // namespace detail

// No limit on the bytes read_file may return.
inline constexpr std::uint64_t kNoByteLimit = std::numeric_limits<std::uint64_t>::max();

// A regular file open for reading (RAII). Anything else is refused with Error naming the path
// and what it is, without blocking: see the header comment.
class InputFile {
public:
    // `op` prefixes the error messages ("[read_file]", "[safetensors]").
    explicit InputFile(const std::string& path, const char* op = "[read_file]") : path_(path), op_(op) {
        errno = 0;
        fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        SEEMOE_CHECK(fd_ >= 0, op, " cannot open '", path, "': ", detail::errno_text());
        struct stat st {};
        if (::fstat(fd_, &st) != 0) {
            const std::string reason = detail::errno_text();
            ::close(fd_);
            throw Error(seemoe::detail::concat(op, " cannot stat '", path, "': ", reason));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd_);
            throw Error(seemoe::detail::concat(op, " '", path, "' is ", detail::file_type_name(st.st_mode),
                                               ", not a regular file"));
        }
        // Regular files ignore O_NONBLOCK; cleared all the same, so reads block as usual.
        ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
        size_ = static_cast<std::uint64_t>(st.st_size);
    }
    ~InputFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    const std::string& path() const { return path_; }
    std::uint64_t size() const { return size_; }

    // Reads exactly n bytes at `offset`; a file that shrank meanwhile is an Error.
    void read_at(std::uint64_t offset, void* buffer, std::size_t n) const {
        auto* out = static_cast<char*>(buffer);
        std::size_t done = 0;
        while (done < n) {
            errno = 0;
            const ssize_t got = ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
            if (got < 0 && errno == EINTR) continue;
            SEEMOE_CHECK(got >= 0, op_, " reading '", path_, "' failed: ", detail::errno_text());
            SEEMOE_CHECK(got > 0, op_, " '", path_, "' ended after ", offset + done, " bytes, expected ",
                         offset + n, " (did it change while being read?)");
            done += static_cast<std::size_t>(got);
        }
    }

private:
    std::string path_;
    const char* op_;
    int fd_ = -1;
    std::uint64_t size_ = 0;
};

// The bytes of a regular file (binary; no newline translation). A file larger than `max_bytes`
// is refused before anything is read; `what` names the limit in that message ("an image").
inline std::string read_file(const std::string& path, std::uint64_t max_bytes = kNoByteLimit,
                             const char* what = "a file", const char* op = "[read_file]") {
    InputFile file(path, op);
    SEEMOE_CHECK(file.size() <= max_bytes, op, " '", path, "' is ", file.size(), " bytes, more than the ",
                 max_bytes, " bytes allowed for ", what);
    SEEMOE_CHECK(file.size() <= static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max()),
                 op, " '", path, "' is too large to read into memory");
    std::string bytes(static_cast<std::size_t>(file.size()), '\0');
    file.read_at(0, bytes.data(), bytes.size());
    return bytes;
}

// Replaces `path` with `bytes` atomically (temp file + rename); the temp file never lingers.
inline void write_file_atomic(const std::string& path, std::string_view bytes) {
    detail::write_atomically(path, "[write_file_atomic]", [&](std::ostream& out) {
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    });
}

}  // namespace seemoe::io
