// safetensors files (qlora_safetensors_open) and the bitsandbytes 4-bit
// weights inside them (qlora_bnb_read_q4), through the C ABI.
//
// Input: the file. Properties:
//  - open fails only with FORMAT (message naming the file) or succeeds;
//  - an accepted file is consistent: every tensor's bytes lie inside the
//    file and are readable, shapes/numel/nbytes agree, find() finds every
//    name, metadata is sorted and retrievable;
//  - writing the tensors and metadata back with qlora_safetensors_writer
//    and reopening gives the same tensors, bytes and metadata;
//  - for every prefix that names a 4-bit weight, qlora_bnb_read_q4 either
//    fails with FORMAT naming the file, or gives a tensor that dequantizes,
//    and that qlora_bnb_add_q4 writes back and reads again bit for bit.
#include "fuzz_common.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

namespace qfuzz {

namespace {

struct Tensor {
    std::string          name;
    qlora_dtype          dtype;
    int32_t              n_dims;
    int64_t              shape[QLORA_ST_MAX_DIMS];
    std::vector<uint8_t> bytes;
};

struct Contents {
    std::vector<Tensor>                              tensors; // in file (data) order
    std::vector<std::pair<std::string, std::string>> metadata;
};

// Reads everything out of an open file, checking consistency on the way.
Contents read_all(qlora_safetensors_t f, uint64_t file_size) {
    Contents c;
    int64_t count = -1;
    check_status(qlora_safetensors_count(f, &count), "qlora_safetensors_count", {});
    QFUZZ_CHECK(count >= 0, "count %lld", static_cast<long long>(count));
    std::set<std::string> names;
    int64_t prev_end = -1;
    for (int64_t i = 0; i < count; ++i) {
        qlora_safetensors_tensor t{};
        if (check_status(qlora_safetensors_info(f, i, &t), "qlora_safetensors_info") != QLORA_OK) return c;
        QFUZZ_CHECK(t.name != nullptr && t.path != nullptr, "tensor %lld: NULL name or path", static_cast<long long>(i));
        const size_t esize = qlora_dtype_size(t.dtype);
        QFUZZ_CHECK(esize > 0, "tensor %s: dtype %d", t.name, static_cast<int>(t.dtype));
        QFUZZ_CHECK(t.n_dims >= 0 && t.n_dims <= QLORA_ST_MAX_DIMS, "tensor %s: n_dims %d", t.name, t.n_dims);
        int64_t numel = 1;
        for (int d = 0; d < t.n_dims; ++d) {
            QFUZZ_CHECK(t.shape[d] >= 0, "tensor %s: shape[%d] = %lld", t.name, d, static_cast<long long>(t.shape[d]));
            numel *= t.shape[d];
        }
        for (int d = t.n_dims; d < QLORA_ST_MAX_DIMS; ++d)
            QFUZZ_CHECK(t.shape[d] == 0, "tensor %s: shape[%d] past n_dims is %lld", t.name, d,
                        static_cast<long long>(t.shape[d]));
        QFUZZ_CHECK(numel == t.numel && t.nbytes == numel * static_cast<int64_t>(esize),
                    "tensor %s: numel %lld / nbytes %lld disagree with the shape", t.name,
                    static_cast<long long>(t.numel), static_cast<long long>(t.nbytes));
        QFUZZ_CHECK(t.file_offset >= 8 && static_cast<uint64_t>(t.file_offset + t.nbytes) <= file_size,
                    "tensor %s: bytes [%lld, +%lld) outside the %llu-byte file", t.name,
                    static_cast<long long>(t.file_offset), static_cast<long long>(t.nbytes),
                    static_cast<unsigned long long>(file_size));
        QFUZZ_CHECK(t.file_offset >= prev_end, "tensor %s overlaps the one before it", t.name);
        prev_end = t.file_offset + t.nbytes;
        QFUZZ_CHECK(names.insert(t.name).second, "tensor name %s listed twice", t.name);

        int64_t found = -2;
        check_status(qlora_safetensors_find(f, t.name, &found), "qlora_safetensors_find", {});
        QFUZZ_CHECK(found == i, "find(%s) = %lld, expected %lld", t.name, static_cast<long long>(found),
                    static_cast<long long>(i));

        qlora_view v{};
        check_status(qlora_safetensors_data(f, i, &v), "qlora_safetensors_data", {});
        QFUZZ_CHECK(v.dtype == t.dtype && v.device == QLORA_DEVICE_HOST && v.stride == 0, "tensor %s: view fields",
                    t.name);
        QFUZZ_CHECK(v.rows * v.cols == t.numel, "tensor %s: view [%lld, %lld] for %lld elements", t.name,
                    static_cast<long long>(v.rows), static_cast<long long>(v.cols), static_cast<long long>(t.numel));
        check_status(qlora_safetensors_prefetch(f, i), "qlora_safetensors_prefetch", {});
        Tensor out;
        out.name = t.name;
        out.dtype = t.dtype;
        out.n_dims = t.n_dims;
        std::copy(t.shape, t.shape + QLORA_ST_MAX_DIMS, out.shape);
        const auto * p = static_cast<const uint8_t *>(v.data);
        touch(p, static_cast<size_t>(t.nbytes));
        out.bytes.assign(p, p + t.nbytes);
        // Dropping the pages and reading again must give the same bytes.
        check_status(qlora_safetensors_release(f, i), "qlora_safetensors_release", {});
        QFUZZ_CHECK(std::equal(out.bytes.begin(), out.bytes.end(), p), "tensor %s changed after release", t.name);
        c.tensors.push_back(std::move(out));
    }
    int64_t found = 0;
    check_status(qlora_safetensors_find(f, "", &found), "qlora_safetensors_find", {});
    QFUZZ_CHECK(found == -1 || names.count(""), "find(\"\") = %lld", static_cast<long long>(found));

    int64_t mcount = -1;
    check_status(qlora_safetensors_metadata_count(f, &mcount), "qlora_safetensors_metadata_count", {});
    for (int64_t i = 0; i < mcount; ++i) {
        const char * k = nullptr;
        const char * v = nullptr;
        check_status(qlora_safetensors_metadata_at(f, i, &k, &v), "qlora_safetensors_metadata_at", {});
        QFUZZ_CHECK(k && v, "metadata %lld: NULL", static_cast<long long>(i));
        if (!c.metadata.empty()) QFUZZ_CHECK(c.metadata.back().first < k, "metadata keys not sorted/unique at %s", k);
        const char * got = nullptr;
        check_status(qlora_safetensors_metadata_get(f, k, &got), "qlora_safetensors_metadata_get", {});
        QFUZZ_CHECK(got && std::string(got) == v, "metadata_get(%s) differs from metadata_at", k);
        c.metadata.emplace_back(k, v);
    }
    // Out-of-range indices are argument errors, not crashes.
    qlora_safetensors_tensor t{};
    check_status(qlora_safetensors_info(f, count, &t), "qlora_safetensors_info", {QLORA_ERROR_INVALID_ARGUMENT});
    check_status(qlora_safetensors_info(f, -1, &t), "qlora_safetensors_info", {QLORA_ERROR_INVALID_ARGUMENT});
    const char * k = nullptr;
    const char * v = nullptr;
    check_status(qlora_safetensors_metadata_at(f, mcount, &k, &v), "qlora_safetensors_metadata_at",
                 {QLORA_ERROR_INVALID_ARGUMENT});
    return c;
}

bool same_contents(const Contents & a, const Contents & b) {
    if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
    // The writer orders tensors by dtype and name: compare by name.
    auto by_name = [](const Contents & c) {
        std::vector<const Tensor *> v;
        for (const auto & t : c.tensors) v.push_back(&t);
        std::sort(v.begin(), v.end(), [](const Tensor * x, const Tensor * y) { return x->name < y->name; });
        return v;
    };
    const auto x = by_name(a), y = by_name(b);
    for (size_t i = 0; i < x.size(); ++i) {
        if (x[i]->name != y[i]->name || x[i]->dtype != y[i]->dtype || x[i]->n_dims != y[i]->n_dims ||
            x[i]->bytes != y[i]->bytes)
            return false;
        for (int d = 0; d < x[i]->n_dims; ++d)
            if (x[i]->shape[d] != y[i]->shape[d]) return false;
    }
    return true;
}

Contents open_and_read(const std::string & path, uint64_t size, const char * what) {
    qlora_safetensors_params p = qlora_safetensors_default_params();
    qlora_safetensors_t f = nullptr;
    const qlora_status st = qlora_safetensors_open(path.c_str(), &p, &f);
    check_status(st, "qlora_safetensors_open", {});
    QFUZZ_CHECK(st == QLORA_OK, "%s: reopening a file the writer wrote failed: %s", what, qlora_last_error());
    Contents c;
    if (st == QLORA_OK) c = read_all(f, size);
    qlora_safetensors_free(f);
    return c;
}

// Writes `c` with the library's writer and reads it back.
void writer_round_trip(const Contents & c) {
    for (const auto & t : c.tensors)
        if (t.bytes.empty() || t.name.empty()) return; // the writer takes neither (documented in qlora.h)
    qlora_safetensors_writer_t w = nullptr;
    check_status(qlora_safetensors_writer_create(&w), "qlora_safetensors_writer_create", {});
    for (const auto & t : c.tensors) {
        const int64_t esize = static_cast<int64_t>(qlora_dtype_size(t.dtype));
        qlora_view v{};
        v.data = const_cast<uint8_t *>(t.bytes.data());
        v.dtype = t.dtype;
        v.device = QLORA_DEVICE_HOST;
        v.rows = 1;
        v.cols = static_cast<int64_t>(t.bytes.size()) / esize;
        const qlora_status st = qlora_safetensors_writer_add(w, t.name.c_str(), &v, t.n_dims, t.shape, 1);
        check_status(st, "qlora_safetensors_writer_add", {});
        QFUZZ_CHECK(st == QLORA_OK, "writer rejected tensor %s that the reader accepted: %s", t.name.c_str(),
                    qlora_last_error());
    }
    for (const auto & [k, v] : c.metadata) {
        const qlora_status st = qlora_safetensors_writer_set_metadata(w, k.c_str(), v.c_str());
        check_status(st, "qlora_safetensors_writer_set_metadata", {});
    }
    TempPath out(".safetensors");
    const qlora_status st = qlora_safetensors_writer_write(w, out.path().c_str());
    check_status(st, "qlora_safetensors_writer_write", {});
    QFUZZ_CHECK(st == QLORA_OK, "write failed: %s", qlora_last_error());
    qlora_safetensors_writer_free(w);
    const auto written = read_whole_file(out.path());
    const Contents again = open_and_read(out.path(), written.size(), "writer round trip");
    QFUZZ_CHECK(same_contents(c, again), "writer round trip changed the tensors or metadata");
}

bool parts_equal(qlora_q4_tensor_t a, qlora_q4_tensor_t b) {
    qlora_q4_info ia{}, ib{};
    check_status(qlora_q4_get_info(a, &ia), "qlora_q4_get_info", {});
    check_status(qlora_q4_get_info(b, &ib), "qlora_q4_get_info", {});
    if (std::memcmp(&ia, &ib, sizeof ia) != 0) return false;
    qlora_q4_parts pa{}, pb{};
    check_status(qlora_q4_get_parts(a, &pa), "qlora_q4_get_parts", {});
    check_status(qlora_q4_get_parts(b, &pb), "qlora_q4_get_parts", {});
    auto eq = [](const void * x, const void * y, int64_t n) {
        if ((x == nullptr) != (y == nullptr)) return false;
        return x == nullptr || std::memcmp(x, y, static_cast<size_t>(n)) == 0;
    };
    return eq(pa.packed, pb.packed, ia.packed_bytes) && eq(pa.code, pb.code, 64) &&
           eq(pa.absmax, pb.absmax, ia.n_blocks * 4) && eq(pa.qabsmax, pb.qabsmax, ia.n_blocks) &&
           eq(pa.nested_absmax, pb.nested_absmax, ia.n_nested_blocks * 4) && eq(pa.nested_code, pb.nested_code, 1024) &&
           std::memcmp(&pa.nested_offset, &pb.nested_offset, 4) == 0;
}

void bnb_prefixes(qlora_safetensors_t f, const std::string & path, const Contents & c) {
    std::set<std::string> prefixes = {""};
    for (const auto & t : c.tensors) {
        const size_t at = t.name.find("weight");
        if (at != std::string::npos) prefixes.insert(t.name.substr(0, at));
    }
    qlora_context_params cp = qlora_context_default_params();
    cp.backend = QLORA_BACKEND_CPU;
    cp.n_threads = 1;
    qlora_context_t ctx = nullptr;
    check_status(qlora_context_create(&cp, &ctx), "qlora_context_create", {});
    int tried = 0;
    for (const auto & prefix : prefixes) {
        if (++tried > 8) break;
        qlora_q4_tensor_t q = nullptr;
        const qlora_status st = qlora_bnb_read_q4(ctx, f, prefix.c_str(), &q);
        check_status(st, "qlora_bnb_read_q4", {QLORA_ERROR_FORMAT});
        if (st != QLORA_OK) {
            QFUZZ_CHECK(q == nullptr, "read_q4 failed but wrote its out-param");
            if (st == QLORA_ERROR_FORMAT)
                QFUZZ_CHECK(std::string(qlora_last_error()).find(path) != std::string::npos,
                            "a FORMAT error must name the file: %s", qlora_last_error());
            continue;
        }
        qlora_q4_info info{};
        check_status(qlora_q4_get_info(q, &info), "qlora_q4_get_info", {});
        if (info.numel <= (1 << 16)) {
            std::vector<float> out(static_cast<size_t>(info.numel));
            qlora_view v{out.data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, info.rows, info.cols, 0};
            check_status(qlora_q4_dequantize(ctx, q, &v), "qlora_q4_dequantize", {});
            // Round trip through the bitsandbytes writer.
            qlora_safetensors_writer_t w = nullptr;
            check_status(qlora_safetensors_writer_create(&w), "qlora_safetensors_writer_create", {});
            check_status(qlora_bnb_add_q4(w, "m.", q, 0), "qlora_bnb_add_q4", {});
            TempPath out_path(".safetensors");
            const qlora_status ws = qlora_safetensors_writer_write(w, out_path.path().c_str());
            check_status(ws, "qlora_safetensors_writer_write", {});
            qlora_safetensors_writer_free(w);
            qlora_safetensors_params p = qlora_safetensors_default_params();
            qlora_safetensors_t f2 = nullptr;
            check_status(qlora_safetensors_open(out_path.path().c_str(), &p, &f2), "qlora_safetensors_open", {});
            qlora_q4_tensor_t q2 = nullptr;
            const qlora_status rs = qlora_bnb_read_q4(ctx, f2, "m.", &q2);
            check_status(rs, "qlora_bnb_read_q4", {});
            QFUZZ_CHECK(rs == QLORA_OK, "reading back a weight written by qlora_bnb_add_q4 failed: %s",
                        qlora_last_error());
            if (rs == QLORA_OK) QFUZZ_CHECK(parts_equal(q, q2), "bnb round trip changed the 4-bit tensor");
            qlora_q4_free(q2);
            qlora_safetensors_free(f2);
        }
        qlora_q4_free(q);
    }
    qlora_context_free(ctx);
}

} // namespace

int qfuzz_safetensors(const uint8_t * data, size_t size) {
    TempFile file(data, size, ".safetensors");
    qlora_safetensors_params p = qlora_safetensors_default_params();
    qlora_safetensors_t f = reinterpret_cast<qlora_safetensors_t>(&p); // must stay untouched on failure
    const qlora_safetensors_t sentinel = f;
    const qlora_status st = qlora_safetensors_open(file.path().c_str(), &p, &f);
    check_status(st, "qlora_safetensors_open", {QLORA_ERROR_FORMAT});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(f == sentinel, "open failed but wrote its out-param");
        QFUZZ_CHECK(std::string(qlora_last_error()).find(file.path()) != std::string::npos,
                    "the message must name the file: %s", qlora_last_error());
        return 0;
    }
    const Contents c = read_all(f, size);
    writer_round_trip(c);
    bnb_prefixes(f, file.path(), c);
    qlora_safetensors_free(f);
    return 0;
}

} // namespace qfuzz
