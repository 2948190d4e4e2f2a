// Optimizer state files (qlora_adamw_load), which a resumed training run
// reads back from disk.
//
// Input: byte 0 = flags (bit 0: 8-bit states, bit 1: states in a pager with
// a 2-page budget, bit 2: fix up the trailing CRC32C so that the fuzzer gets
// past the checksum into the contents), the rest is the file. The optimizer
// registers the buffer sizes the file's header claims when they are small
// (<= 4 buffers of <= 4096 elements), else {300, 1}, so both the matching
// and the mismatching paths are reached. Properties:
//  - a refusal is FORMAT (the file) or INVALID_ARGUMENT (a mismatch with the
//    optimizer), names the file, and leaves the optimizer unchanged: same
//    step and hyper-parameters, and it can still step;
//  - an accepted file restores the header's step and hyper-parameters, and
//    saving again writes the same bytes (the reserved header field aside);
//  - the loaded optimizer can take a step with finite gradients.
#include "fuzz_common.hpp"

#include "pager/crc32c.hpp"

#include <cmath>
#include <cstring>
#include <vector>

namespace qfuzz {

namespace {

constexpr size_t kHeader = 72;

uint32_t le32(const uint8_t * p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

bool same_params(const qlora_adamw_params & a, const qlora_adamw_params & b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

void step_once(qlora_context_t ctx, qlora_adamw_t opt, const std::vector<int64_t> & sizes, const char * when) {
    std::vector<std::vector<float>> p(sizes.size()), g(sizes.size());
    std::vector<qlora_view> pv, gv;
    for (size_t i = 0; i < sizes.size(); ++i) {
        p[i].assign(static_cast<size_t>(sizes[i]), 0.5f);
        g[i].resize(static_cast<size_t>(sizes[i]));
        for (size_t k = 0; k < g[i].size(); ++k) g[i][k] = static_cast<float>(static_cast<int>(k % 7) - 3) * 0.01f;
        pv.push_back({p[i].data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 1, sizes[i], 0});
        gv.push_back({g[i].data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 1, sizes[i], 0});
    }
    qlora_adamw_step_info info{};
    const qlora_status st =
        qlora_adamw_step(ctx, opt, pv.data(), gv.data(), static_cast<int32_t>(sizes.size()), &info);
    check_status(st, "qlora_adamw_step", {});
    QFUZZ_CHECK(st == QLORA_OK, "a step %s failed: %s", when, qlora_last_error());
}

} // namespace

int qfuzz_adamw_load(const uint8_t * data, size_t size) {
    if (size == 0) return 0;
    const uint8_t flags = data[0];
    std::vector<uint8_t> file(data + 1, data + size);
    if ((flags & 4) && file.size() >= 4) {
        const uint32_t crc = qlora::crc32c(file.data(), file.size() - 4);
        std::memcpy(file.data() + file.size() - 4, &crc, 4);
    }
    std::vector<int64_t> sizes = {300, 1};
    if (file.size() >= kHeader) {
        const uint32_t n = le32(file.data() + 28);
        if (n >= 1 && n <= 4 && file.size() >= kHeader + 8 * n) {
            std::vector<int64_t> claimed(n);
            std::memcpy(claimed.data(), file.data() + kHeader, 8 * n);
            bool small = true;
            for (int64_t c : claimed) small = small && c >= 1 && c <= 4096;
            if (small) sizes = claimed;
        }
    }

    qlora_context_params cp = qlora_context_default_params();
    cp.backend = QLORA_BACKEND_CPU;
    cp.n_threads = 1;
    qlora_context_t ctx = nullptr;
    check_status(qlora_context_create(&cp, &ctx), "qlora_context_create", {});

    qlora_pager_t pager = nullptr;
    if (flags & 2) {
        qlora_pager_params pp = qlora_pager_default_params();
        pp.page_bytes = 4096;
        pp.budget_bytes = 2 * 4096;
        pp.spill_dir = scratch_dir().c_str();
        check_status(qlora_pager_create(&pp, &pager), "qlora_pager_create", {});
    }
    qlora_adamw_params ap = qlora_adamw_default_params();
    ap.state = (flags & 1) ? QLORA_OPTIM_STATE_8BIT : QLORA_OPTIM_STATE_F32;
    qlora_adamw_t opt = nullptr;
    check_status(qlora_adamw_create(&ap, pager, &opt), "qlora_adamw_create", {});
    qlora_pager_free(pager); // the optimizer keeps the pager alive
    for (int64_t n : sizes) check_status(qlora_adamw_add_buffer(opt, n, nullptr), "qlora_adamw_add_buffer", {});

    TempFile in(file, ".qopt");
    const qlora_status st = qlora_adamw_load(opt, in.path().c_str());
    check_status(st, "qlora_adamw_load", {QLORA_ERROR_FORMAT, QLORA_ERROR_INVALID_ARGUMENT});
    const std::string message = qlora_last_error();
    qlora_adamw_info info{};
    qlora_adamw_params after{};
    check_status(qlora_adamw_get_info(opt, &info), "qlora_adamw_get_info", {});
    check_status(qlora_adamw_get_params(opt, &after), "qlora_adamw_get_params", {});
    if (st != QLORA_OK) {
        QFUZZ_CHECK(message.find(in.path()) != std::string::npos, "the message must name the file: %s",
                    message.c_str());
        QFUZZ_CHECK(info.step == 0 && info.failed == 0 && same_params(after, ap),
                    "a refused load changed the optimizer (step %lld, failed %d)", static_cast<long long>(info.step),
                    info.failed);
        step_once(ctx, opt, sizes, "after a refused load");
    } else {
        int64_t step;
        std::memcpy(&step, file.data() + 32, 8);
        QFUZZ_CHECK(info.step == step && info.failed == 0, "loaded step %lld, header says %lld",
                    static_cast<long long>(info.step), static_cast<long long>(step));
        qlora_adamw_params want = ap;
        std::memcpy(&want.lr, file.data() + 40, 6 * 4);
        std::memcpy(&want.bias_correction, file.data() + 64, 4);
        QFUZZ_CHECK(same_params(after, want), "loaded hyper-parameters differ from the header");
        TempPath out(".qopt");
        check_status(qlora_adamw_save(opt, out.path().c_str()), "qlora_adamw_save", {});
        const std::vector<uint8_t> saved = read_whole_file(out.path());
        QFUZZ_CHECK(saved.size() == file.size(), "saved %zu bytes, loaded %zu", saved.size(), file.size());
        if (saved.size() == file.size()) {
            QFUZZ_CHECK(std::memcmp(saved.data(), file.data(), 68) == 0, "saved header differs from the loaded one");
            QFUZZ_CHECK(std::memcmp(saved.data() + kHeader, file.data() + kHeader, file.size() - kHeader - 4) == 0,
                        "saved states differ from the loaded ones");
        }
        step_once(ctx, opt, sizes, "after a load");
    }
    qlora_adamw_free(opt);
    qlora_context_free(ctx);
    return 0;
}

} // namespace qfuzz
