// seemoe/dist/communicator.hpp — the optional MPI layer: an MPI session and a Communicator.
//
//   dist::Environment env(argc, argv);      // MPI_Init_thread ... MPI_Finalize, once per program
//   dist::Communicator world = dist::Communicator::world();
//   world.all_reduce_sum(grad, n);          // in place, every rank ends with the sum
//   world.all_to_all_v(send, send_counts, recv, recv_counts);
//
// Only the headers of this folder include <mpi.h>; they need the CMake target seemoe::mpi (which
// adds MPI::MPI_CXX). Everything else in seemoe builds and runs without MPI.
//
// A Communicator owns a duplicate of MPI_COMM_WORLD (or a split of it), so the library's messages
// never meet the application's, and frees it when it goes. Its error handler is MPI_ERRORS_RETURN:
// a failing call becomes a seemoe::Error naming the call ("[dist] MPI_Allreduce failed: ...")
// instead of MPI's default of killing the job.
//
// Convention: every operation is collective (each rank of the communicator must call it, in the
// same order, with matching sizes), except rank() and size(). One rank throwing while the others
// wait in a collective would hang them, so code that can fail on one rank only (bad input, a
// non-finite loss) runs inside `agree`, which turns a local failure into the same Error on every
// rank; what is left (a failure between collectives that cannot be agreed) is for abort().
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "../core/common.hpp"

namespace seemoe::dist {

namespace detail {

// Throws seemoe::Error naming the MPI call when it did not succeed.
inline void check_mpi(int code, const char* call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw Error(::seemoe::detail::concat("[dist] ", call, " failed: ", std::string(text, static_cast<std::size_t>(length))));
}

// MPI counts are int: a larger message is an error here rather than a silent wrap.
inline int mpi_count(Index n, const char* call) {
    SEEMOE_CHECK(n >= 0 && n <= INT_MAX, "[dist] ", call, ": ", n, " elements do not fit an MPI count");
    return static_cast<int>(n);
}

template <typename T>
MPI_Datatype mpi_type();
template <>
inline MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
inline MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <>
inline MPI_Datatype mpi_type<std::int64_t>() { return MPI_INT64_T; }
template <>
inline MPI_Datatype mpi_type<int>() { return MPI_INT; }
template <>
inline MPI_Datatype mpi_type<char>() { return MPI_CHAR; }

}  // namespace detail

// MPI_Init_thread on construction (unless MPI is already up), MPI_Finalize on destruction. The
// threads of seemoe's pool never call MPI: one thread per process does (MPI_THREAD_FUNNELED).
class Environment {
public:
    Environment(int& argc, char**& argv) {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (initialized) return;
        int provided = 0;
        detail::check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        owns_ = true;
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
    ~Environment() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (owns_ && !finalized) MPI_Finalize();
    }
    Environment(const Environment&) = delete;
    Environment& operator=(const Environment&) = delete;

    // Whether this process was started by mpirun with more than one process in the job.
    static bool launched_with_several_ranks() {
        int size = 1;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        return size > 1;
    }

private:
    bool owns_ = false;
};

// A non-blocking collective in flight; wait() finishes it (the destructor waits too, so a buffer
// never goes while MPI still writes into it).
class Request {
public:
    Request() = default;
    explicit Request(MPI_Request r, const char* call) : request_(r), call_(call) {}
    Request(Request&& o) noexcept : request_(std::exchange(o.request_, MPI_REQUEST_NULL)), call_(o.call_) {}
    Request& operator=(Request&& o) noexcept {
        if (this != &o) {
            finish_quietly();
            request_ = std::exchange(o.request_, MPI_REQUEST_NULL);
            call_ = o.call_;
        }
        return *this;
    }
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    ~Request() { finish_quietly(); }

    void wait() {
        if (request_ == MPI_REQUEST_NULL) return;
        detail::check_mpi(MPI_Wait(&request_, MPI_STATUS_IGNORE), call_);
    }

private:
    void finish_quietly() {
        if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
    }
    MPI_Request request_ = MPI_REQUEST_NULL;
    const char* call_ = "MPI_Wait";
};

class Communicator {
public:
    // A duplicate of MPI_COMM_WORLD. Needs an Environment (or MPI_Init) first.
    static Communicator world() { return Communicator(MPI_COMM_WORLD); }

    // Duplicates `comm`; the duplicate is freed with this object.
    explicit Communicator(MPI_Comm comm) {
        detail::check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        detail::check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        detail::check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    }
    Communicator(Communicator&& o) noexcept
        : comm_(std::exchange(o.comm_, MPI_COMM_NULL)), rank_(o.rank_), size_(o.size_) {}
    Communicator& operator=(Communicator&& o) noexcept {
        if (this != &o) {
            free();
            comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
            rank_ = o.rank_;
            size_ = o.size_;
        }
        return *this;
    }
    Communicator(const Communicator&) = delete;
    Communicator& operator=(const Communicator&) = delete;
    ~Communicator() { free(); }

    // The ranks with the same `color` form one new communicator, ordered by `key` (MPI_Comm_split).
    Communicator split(int color, int key) const {
        MPI_Comm part = MPI_COMM_NULL;
        detail::check_mpi(MPI_Comm_split(comm_, color, key, &part), "MPI_Comm_split");
        Communicator out(part);
        MPI_Comm_free(&part);
        return out;
    }

    int rank() const { return rank_; }
    int size() const { return size_; }
    MPI_Comm handle() const { return comm_; }

    void barrier() const { detail::check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

    template <typename T>
    void broadcast(T* data, Index count, int root = 0) const {
        detail::check_mpi(MPI_Bcast(data, detail::mpi_count(count, "MPI_Bcast"), detail::mpi_type<T>(), root, comm_),
                          "MPI_Bcast");
    }
    // A string of any length from `root` (its length first).
    void broadcast(std::string& text, int root = 0) const {
        std::int64_t length = static_cast<std::int64_t>(text.size());
        broadcast(&length, 1, root);
        text.resize(static_cast<std::size_t>(length));
        if (length > 0) broadcast(text.data(), length, root);
    }

    // In place: every rank ends with the elementwise sum (max, min) over the ranks.
    template <typename T>
    void all_reduce_sum(T* data, Index count) const { all_reduce(data, count, MPI_SUM); }
    template <typename T>
    void all_reduce_max(T* data, Index count) const { all_reduce(data, count, MPI_MAX); }
    template <typename T>
    void all_reduce_min(T* data, Index count) const { all_reduce(data, count, MPI_MIN); }
    template <typename T>
    T all_reduce_sum(T value) const {
        all_reduce(&value, 1, MPI_SUM);
        return value;
    }

    // The same as all_reduce_sum, started now and finished by the returned Request's wait().
    template <typename T>
    Request start_all_reduce_sum(T* data, Index count) const {
        MPI_Request r = MPI_REQUEST_NULL;
        detail::check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, detail::mpi_count(count, "MPI_Iallreduce"),
                                         detail::mpi_type<T>(), MPI_SUM, comm_, &r),
                          "MPI_Iallreduce");
        return Request(r, "MPI_Iallreduce");
    }

    // Rank r sends send_counts[q] elements to each rank q (blocks of `send`, in rank order) and
    // receives recv_counts[q] from each rank q into `recv` (in rank order). Counts are in elements;
    // both vectors have size() entries, and recv_counts[q] on rank r must equal send_counts[r] on q.
    template <typename T>
    void all_to_all_v(const T* send, const std::vector<Index>& send_counts, T* recv,
                      const std::vector<Index>& recv_counts) const {
        SEEMOE_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
                     "[dist] MPI_Alltoallv: need one count per rank (", size_, "), got ", send_counts.size(),
                     " send and ", recv_counts.size(), " receive counts");
        std::vector<int> sc(static_cast<std::size_t>(size_)), sd(sc.size()), rc(sc.size()), rd(sc.size());
        Index s_off = 0, r_off = 0;
        for (std::size_t q = 0; q < sc.size(); ++q) {
            sc[q] = detail::mpi_count(send_counts[q], "MPI_Alltoallv");
            rc[q] = detail::mpi_count(recv_counts[q], "MPI_Alltoallv");
            sd[q] = detail::mpi_count(s_off, "MPI_Alltoallv");
            rd[q] = detail::mpi_count(r_off, "MPI_Alltoallv");
            s_off += send_counts[q];
            r_off += recv_counts[q];
        }
        detail::check_mpi(MPI_Alltoallv(send, sc.data(), sd.data(), detail::mpi_type<T>(), recv, rc.data(), rd.data(),
                                        detail::mpi_type<T>(), comm_),
                          "MPI_Alltoallv");
    }

    // Each rank gives `count` elements and receives size()*count, rank by rank (MPI_Allgather).
    template <typename T>
    std::vector<T> all_gather(const T* data, Index count) const {
        std::vector<T> out(static_cast<std::size_t>(count * size_));
        detail::check_mpi(MPI_Allgather(data, detail::mpi_count(count, "MPI_Allgather"), detail::mpi_type<T>(),
                                        out.data(), detail::mpi_count(count, "MPI_Allgather"), detail::mpi_type<T>(),
                                        comm_),
                          "MPI_Allgather");
        return out;
    }

    // Runs fn() on every rank and makes its outcome collective: if it threw on any rank, every
    // rank throws seemoe::Error with the message of the lowest such rank ("rank 1: <message>").
    // Costs one all-reduce of an int (and a broadcast only when something failed).
    template <typename Fn>
    void agree(Fn&& fn) const {
        std::string message;
        int failed = 0;
        try {
            fn();
        } catch (const std::exception& e) {
            message = e.what();
            failed = 1;
        }
        check_all(failed == 0, message);
    }
    // The collective part of agree(): `ok` is this rank's verdict, `message` its reason.
    void check_all(bool ok, std::string message) const {
        int first_failed = ok ? INT_MAX : rank_;
        all_reduce_min(&first_failed, 1);
        if (first_failed == INT_MAX) return;
        broadcast(message, first_failed);
        throw Error(size_ > 1 ? ::seemoe::detail::concat("rank ", first_failed, ": ", message) : message);
    }

    // Ends every process of the job with `code`: for a failure the other ranks cannot learn of
    // through agree() (they may be waiting in a collective already).
    [[noreturn]] void abort(int code) const {
        MPI_Abort(comm_, code);
        std::abort();  // MPI_Abort does not return; this is for the compiler
    }

private:
    template <typename T>
    void all_reduce(T* data, Index count, MPI_Op op) const {
        detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, detail::mpi_count(count, "MPI_Allreduce"),
                                        detail::mpi_type<T>(), op, comm_),
                          "MPI_Allreduce");
    }
    void free() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
        comm_ = MPI_COMM_NULL;
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
};

}  // namespace seemoe::dist
