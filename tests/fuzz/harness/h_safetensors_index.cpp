// Sharded safetensors checkpoints (qlora_safetensors_open_index): the index
// JSON and the agreement between it and its shards.
//
// Input: u16 n, n bytes of model.safetensors.index.json, u16 m, m bytes of
// the shard a.safetensors, the rest the shard b.safetensors (all in a fresh
// directory). Properties: open_index fails only with FORMAT or IO (a shard
// the index names that does not exist) and never writes its out-param then;
// on success every tensor is readable inside its shard and the tensor set is
// exactly the union of the shards' tensors.
#include "fuzz_common.hpp"

#include <filesystem>
#include <set>
#include <string>

namespace qfuzz {

namespace {

std::set<std::string> names_in(qlora_safetensors_t f) {
    std::set<std::string> out;
    int64_t n = 0;
    check_status(qlora_safetensors_count(f, &n), "qlora_safetensors_count", {});
    for (int64_t i = 0; i < n; ++i) {
        qlora_safetensors_tensor t{};
        check_status(qlora_safetensors_info(f, i, &t), "qlora_safetensors_info", {});
        out.insert(t.name);
    }
    return out;
}

} // namespace

int qfuzz_safetensors_index(const uint8_t * data, size_t size) {
    Bytes in(data, size);
    std::string index;
    {
        const size_t n = std::min<size_t>(in.u16(), in.left());
        for (size_t i = 0; i < n; ++i) index.push_back(static_cast<char>(in.u8()));
    }
    std::vector<uint8_t> shard_a;
    {
        const size_t m = std::min<size_t>(in.u16(), in.left());
        for (size_t i = 0; i < m; ++i) shard_a.push_back(in.u8());
    }
    const std::vector<uint8_t> shard_b = in.rest();

    std::string dir = scratch_dir() + "/idxXXXXXX";
    QFUZZ_CHECK(mkdtemp(dir.data()) != nullptr, "mkdtemp");
    {
        TempFile a(shard_a, ""), b(shard_b, "");
        std::filesystem::rename(a.path(), dir + "/a.safetensors");
        std::filesystem::rename(b.path(), dir + "/b.safetensors");
    }
    const std::string index_path = dir + "/model.safetensors.index.json";
    {
        TempFile i(index.data(), index.size());
        std::filesystem::rename(i.path(), index_path);
    }

    qlora_safetensors_params p = qlora_safetensors_default_params();
    qlora_safetensors_t f = nullptr;
    const qlora_status st = qlora_safetensors_open_index(index_path.c_str(), &p, &f);
    check_status(st, "qlora_safetensors_open_index", {QLORA_ERROR_FORMAT, QLORA_ERROR_IO});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(f == nullptr, "open_index failed but wrote its out-param");
    } else {
        const std::set<std::string> all = names_in(f);
        std::set<std::string> from_shards;
        for (const char * shard : {"a.safetensors", "b.safetensors"}) {
            qlora_safetensors_t s = nullptr;
            const std::string path = dir + "/" + shard;
            if (qlora_safetensors_open(path.c_str(), &p, &s) == QLORA_OK) {
                for (const auto & n : names_in(s)) {
                    // Only shards the index names are part of the set.
                    int64_t idx = -2;
                    check_status(qlora_safetensors_find(f, n.c_str(), &idx), "qlora_safetensors_find", {});
                    if (idx >= 0) {
                        qlora_safetensors_tensor t{};
                        check_status(qlora_safetensors_info(f, idx, &t), "qlora_safetensors_info", {});
                        QFUZZ_CHECK(std::string(t.path) == path, "tensor %s reported in %s, found in %s", n.c_str(),
                                    t.path, path.c_str());
                        from_shards.insert(n);
                    }
                }
                qlora_safetensors_free(s);
            }
        }
        QFUZZ_CHECK(all == from_shards, "the index's tensor set (%zu) is not the union of its shards' (%zu)",
                    all.size(), from_shards.size());
        int64_t n = 0;
        check_status(qlora_safetensors_count(f, &n), "qlora_safetensors_count", {});
        for (int64_t i = 0; i < n; ++i) {
            qlora_safetensors_tensor t{};
            qlora_view v{};
            check_status(qlora_safetensors_info(f, i, &t), "qlora_safetensors_info", {});
            check_status(qlora_safetensors_data(f, i, &v), "qlora_safetensors_data", {});
            touch(v.data, static_cast<size_t>(t.nbytes));
        }
        qlora_safetensors_free(f);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    return 0;
}

} // namespace qfuzz
