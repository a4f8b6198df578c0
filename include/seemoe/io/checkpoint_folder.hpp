// seemoe/io/checkpoint_folder.hpp — a run's checkpoints, each committed by one atomic rename.
//
// A training run writes more than one file per checkpoint (the model and the training state).
// Written side by side in place, a crash between the two leaves a model one step ahead of its
// state. Here every checkpoint is a folder, filled under a temporary name and renamed into place
// only when complete:
//
//   <root>/checkpoints/step-00000120/        model.safetensors, training_state.safetensors
//   <root>/checkpoints/step-00000120.tmp/    being written; never read, removed on the next start
//   <root>/model.safetensors                 hard link to the newest checkpoint's model, so
//                                            `--model <root>` and PyTorch find it by its old name
//
// commit(): write(tmp) fills step-N.tmp (each file fsync'd by io::write_atomically), the folder
// is fsync'd and renamed to step-N (POSIX rename is atomic), and the parent fsync'd: after any
// crash a step-N folder holds a complete pair, or does not exist. Then the link is switched
// (atomically), and all but the newest `keep` checkpoints are removed. A failed write (disk
// full, file-size limit) removes the temporary folder and leaves every earlier checkpoint as it
// was.
//
// Convention: steps() lists only committed folders (step-<digits>), newest first; a reader tries
// them in that order and falls back to an older one if the newest does not load.
#pragma once

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "file.hpp"

namespace seemoe::io {

class CheckpointFolder {
public:
    struct Entry {
        Index step;
        std::filesystem::path dir;
    };

    explicit CheckpointFolder(std::filesystem::path root) : root_(std::move(root)), dir_(root_ / "checkpoints") {}

    const std::filesystem::path& root() const { return root_; }
    const std::filesystem::path& dir() const { return dir_; }
    // The stable name of the newest model (a hard link into its step folder).
    std::filesystem::path model_link() const { return root_ / "model.safetensors"; }

    static std::string step_name(Index step) {
        char name[32];
        std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
        return name;
    }

    // Committed checkpoints, newest first.
    std::vector<Entry> steps() const {
        std::vector<Entry> out;
        std::error_code ec;
        if (!std::filesystem::is_directory(dir_, ec)) return out;
        for (const auto& item : std::filesystem::directory_iterator(dir_, ec)) {
            Index step = -1;
            if (parse_step_name(item.path().filename().string(), step) && item.is_directory(ec))
                out.push_back({step, item.path()});
        }
        std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.step > b.step; });
        return out;
    }

    // Removes what a killed run may have left: temporary step folders and link files.
    void remove_temporaries() const {
        std::error_code ec;
        if (std::filesystem::is_directory(dir_, ec))
            for (const auto& item : std::filesystem::directory_iterator(dir_, ec)) {
                const std::string name = item.path().filename().string();
                if (ends_with(name, ".tmp") || ends_with(name, ".old")) std::filesystem::remove_all(item.path(), ec);
            }
        std::filesystem::remove(model_link().string() + ".tmp", ec);
    }

    // Removes the checkpoints after `step` (a run resumed from an older checkpoint rewrites them).
    void remove_after(Index step) const {
        std::error_code ec;
        for (const Entry& e : steps())
            if (e.step > step) std::filesystem::remove_all(e.dir, ec);
    }

    // Removes every checkpoint and the model link (a fresh run with --force).
    void clear() const {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        std::filesystem::remove(model_link(), ec);
    }

    // Writes the checkpoint of `step`: write(folder) creates its files in a temporary folder, which
    // is then renamed into place (see the header comment). Keeps the newest `keep` checkpoints.
    // Returns the committed folder. Throws Error (and leaves no temporary folder) on failure.
    template <typename WriteFn>
    std::filesystem::path commit(Index step, WriteFn&& write, Index keep) const {
        namespace fs = std::filesystem;
        SEEMOE_CHECK(keep >= 1, "[checkpoint] keep must be at least 1, got ", keep);
        const fs::path final_dir = dir_ / step_name(step);
        const fs::path temp = final_dir.string() + ".tmp";
        std::error_code ec;
        fs::create_directories(dir_, ec);
        SEEMOE_CHECK(!ec, "[checkpoint] cannot create '", dir_.string(), "': ", ec.message());
        fs::remove_all(temp, ec);
        fs::create_directory(temp, ec);
        SEEMOE_CHECK(!ec, "[checkpoint] cannot create '", temp.string(), "': ", ec.message());
        try {
            write(temp);
            detail::sync_directory(temp.string(), "[checkpoint]");
            if (fs::exists(final_dir, ec)) {  // an older write of this step (a run resumed before it)
                const fs::path old = final_dir.string() + ".old";
                fs::remove_all(old, ec);
                fs::rename(final_dir, old);
                fs::remove_all(old, ec);
            }
            fs::rename(temp, final_dir);  // the commit
            detail::sync_directory(dir_.string(), "[checkpoint]");
        } catch (const fs::filesystem_error& e) {
            fs::remove_all(temp, ec);
            throw Error(seemoe::detail::concat("[checkpoint] committing '", final_dir.string(), "' failed: ",
                                               e.code().message()));
        } catch (...) {
            fs::remove_all(temp, ec);
            throw;
        }
        link_model(final_dir / "model.safetensors");
        const std::vector<Entry> all = steps();
        for (std::size_t i = static_cast<std::size_t>(keep); i < all.size(); ++i)
            if (all[i].dir != final_dir) fs::remove_all(all[i].dir, ec);
        return final_dir;
    }

private:
    static bool ends_with(const std::string& s, const char* suffix) {
        const std::string t(suffix);
        return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
    }

    // "step-00000120" -> 120; anything else (".tmp", other files) -> false.
    static bool parse_step_name(const std::string& name, Index& step) {
        if (name.size() <= 5 || name.compare(0, 5, "step-") != 0 || name.size() > 5 + 18) return false;
        step = 0;
        for (std::size_t i = 5; i < name.size(); ++i) {
            if (name[i] < '0' || name[i] > '9') return false;
            step = step * 10 + (name[i] - '0');
        }
        return true;
    }

    // Points <root>/model.safetensors at `model`: a hard link made under a temporary name and
    // renamed over the old one (a copy where the file system has no hard links).
    void link_model(const std::filesystem::path& model) const {
        namespace fs = std::filesystem;
        const fs::path temp = model_link().string() + ".tmp";
        std::error_code ec;
        fs::remove(temp, ec);
        fs::create_hard_link(model, temp, ec);
        if (ec) {
            ec.clear();
            fs::copy_file(model, temp, fs::copy_options::overwrite_existing, ec);
        }
        if (!ec) fs::rename(temp, model_link(), ec);
        if (ec) {
            fs::remove(temp, ec);
            throw Error(seemoe::detail::concat("[checkpoint] cannot point '", model_link().string(), "' at '",
                                               model.string(), "': ", ec.message()));
        }
        detail::sync_directory(root_.string(), "[checkpoint]");
    }

    std::filesystem::path root_;
    std::filesystem::path dir_;
};

}  // namespace seemoe::io
