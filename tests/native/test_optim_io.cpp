// Optimizer state save/load: resume equals never stopping, every refusal of a
// bad file leaves the optimizer unchanged, saves are atomic, and a step that
// fails half-way (spill file corrupted) poisons the optimizer until a load.
#include "optim/adamw.hpp"
#include "pager/host_spill_pager.hpp"
#include "test_optim_util.hpp"

#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace qtest;

namespace {

std::vector<uint8_t> file_bytes(const fs::path & p) {
    std::ifstream f(p, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path & p, const std::vector<uint8_t> & b) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char *>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<std::string> entries(const fs::path & dir) {
    std::vector<std::string> out;
    for (const auto & e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

} // namespace

TEST(AdamwIo, SaveLoadContinueEqualsNeverStopping) {
    Problem pb(kSizes, 81);
    pb.cache_grads(100);
    auto ctx = make_context(QLORA_BACKEND_CPU);
    for (qlora_optim_state state : {QLORA_OPTIM_STATE_F32, QLORA_OPTIM_STATE_8BIT}) {
        SCOPED_TRACE(state_name(state));
        const qlora_adamw_params hp = hyper(state);
        Buffers straight = pb.init;
        auto ref_opt = make_opt(hp, nullptr, pb.sizes);
        run_steps(ctx.get(), ref_opt.get(), pb, straight, 0, 100);

        TempDir dir;
        const std::string ckpt = (dir.path / "opt.state").string();
        Buffers params = pb.init;
        {
            auto first = make_opt(hp, nullptr, pb.sizes);
            run_steps(ctx.get(), first.get(), pb, params, 0, 40);
            ASSERT_EQ(qlora_adamw_save(first.get(), ckpt.c_str()), QLORA_OK) << qlora_last_error();
            // Saving again gives the same bytes (deterministic, padding included).
            const auto a = file_bytes(ckpt);
            ASSERT_EQ(qlora_adamw_save(first.get(), ckpt.c_str()), QLORA_OK);
            EXPECT_EQ(a, file_bytes(ckpt));
        }
        EXPECT_EQ(entries(dir.path), std::vector<std::string>{"opt.state"}); // no temporary left behind
        // Resume into a paged optimizer (10% budget) created with other hyper-parameters:
        // the file's win.
        auto pager = make_pager(dir.path / "spill", 16384, 4096);
        qlora_adamw_params other = hp;
        other.lr = 0.5f;
        other.beta1 = 0.5f;
        auto second = make_opt(other, pager.get(), pb.sizes);
        ASSERT_EQ(qlora_adamw_load(second.get(), ckpt.c_str()), QLORA_OK) << qlora_last_error();
        qlora_adamw_params got{};
        ASSERT_EQ(qlora_adamw_get_params(second.get(), &got), QLORA_OK);
        EXPECT_EQ(got.lr, hp.lr);
        EXPECT_EQ(got.beta1, hp.beta1);
        EXPECT_EQ(got.max_grad_norm, hp.max_grad_norm);
        qlora_adamw_info info{};
        ASSERT_EQ(qlora_adamw_get_info(second.get(), &info), QLORA_OK);
        EXPECT_EQ(info.step, 40);
        run_steps(ctx.get(), second.get(), pb, params, 40, 100);
        EXPECT_TRUE(bit_equal(params, straight));
        // And back: a paged optimizer's save loads into an unpaged one.
        const std::string ckpt2 = (dir.path / "opt2.state").string();
        ASSERT_EQ(qlora_adamw_save(second.get(), ckpt2.c_str()), QLORA_OK) << qlora_last_error();
        ASSERT_EQ(qlora_adamw_save(ref_opt.get(), ckpt.c_str()), QLORA_OK) << qlora_last_error();
        EXPECT_EQ(file_bytes(ckpt), file_bytes(ckpt2)); // same state, same bytes, paged or not
    }
}

TEST(AdamwIo, LoadRefusesBadFilesAndLeavesTheOptimizerUnchanged) {
    Problem pb({300, 1000}, 83);
    pb.cache_grads(20);
    auto ctx = make_context(QLORA_BACKEND_CPU);
    const qlora_adamw_params hp = hyper(QLORA_OPTIM_STATE_8BIT);
    TempDir dir;
    const fs::path good = dir.path / "good.state";
    Buffers params = pb.init;
    auto opt = make_opt(hp, nullptr, pb.sizes);
    run_steps(ctx.get(), opt.get(), pb, params, 0, 5);
    ASSERT_EQ(qlora_adamw_save(opt.get(), good.string().c_str()), QLORA_OK);
    run_steps(ctx.get(), opt.get(), pb, params, 5, 10); // now at step 10, different from the file
    const auto bytes = file_bytes(good);
    ASSERT_EQ(bytes.size(), 72u + 2 * 8 + (2 + 4) * 520 + 4);

    struct Case {
        const char * what;
        qlora_status status;
        const char * message;
        std::function<void(std::vector<uint8_t> &)> edit;
    };
    auto put32 = [](std::vector<uint8_t> & b, size_t off, uint32_t v) { std::memcpy(b.data() + off, &v, 4); };
    auto put64 = [](std::vector<uint8_t> & b, size_t off, int64_t v) { std::memcpy(b.data() + off, &v, 8); };
    const std::vector<Case> cases = {
        {"empty", QLORA_ERROR_FORMAT, "too small", [](auto & b) { b.clear(); }},
        {"magic", QLORA_ERROR_FORMAT, "bad magic", [](auto & b) { b[0] = 'X'; }},
        {"version", QLORA_ERROR_FORMAT, "version 2", [&](auto & b) { put32(b, 8, 2); }},
        {"algorithm", QLORA_ERROR_FORMAT, "not AdamW", [&](auto & b) { put32(b, 12, 9); }},
        {"state type", QLORA_ERROR_INVALID_ARGUMENT, "holds 32-bit states but this optimizer uses 8-bit",
         [&](auto & b) { put32(b, 16, 0); }},
        {"block bytes", QLORA_ERROR_FORMAT, "blocks of", [&](auto & b) { put32(b, 24, 2048); }},
        {"buffer count", QLORA_ERROR_INVALID_ARGUMENT, "holds 3 buffers but this optimizer has 2",
         [&](auto & b) { put32(b, 28, 3); }},
        {"negative step", QLORA_ERROR_FORMAT, "negative step", [&](auto & b) { put64(b, 32, -1); }},
        {"bad beta2", QLORA_ERROR_FORMAT, "beta2", [&](auto & b) { const float x = 1.5f; std::memcpy(b.data() + 48, &x, 4); }},
        {"buffer size", QLORA_ERROR_INVALID_ARGUMENT, "buffer 1 has 1001 elements in the file but 1000",
         [&](auto & b) { put64(b, 80, 1001); }},
        {"truncated", QLORA_ERROR_FORMAT, "truncated", [](auto & b) { b.resize(b.size() - 100); }},
        {"trailing data", QLORA_ERROR_FORMAT, "trailing", [](auto & b) { b.push_back(0); }},
        {"flipped state byte", QLORA_ERROR_FORMAT, "CRC32C", [](auto & b) { b[72 + 16 + 700] ^= 0x10; }},
        {"flipped lr", QLORA_ERROR_FORMAT, "CRC32C", [](auto & b) { b[40] ^= 0x01; }},
        {"flipped checksum", QLORA_ERROR_FORMAT, "CRC32C", [](auto & b) { b.back() ^= 0x80; }},
    };
    const fs::path bad = dir.path / "bad.state";
    for (const Case & c : cases) {
        auto b = bytes;
        c.edit(b);
        write_bytes(bad, b);
        EXPECT_EQ(qlora_adamw_load(opt.get(), bad.string().c_str()), c.status) << c.what;
        const std::string msg = qlora_last_error();
        EXPECT_TRUE(contains(msg, c.message)) << c.what << ": " << msg;
        EXPECT_TRUE(contains(msg, bad.string())) << c.what << ": " << msg;
    }
    EXPECT_EQ(qlora_adamw_load(opt.get(), (dir.path / "missing.state").string().c_str()), QLORA_ERROR_IO);
    EXPECT_TRUE(contains(qlora_last_error(), "missing.state")) << qlora_last_error();
    EXPECT_EQ(qlora_adamw_load(opt.get(), dir.path.string().c_str()), QLORA_ERROR_IO); // a directory
    EXPECT_EQ(qlora_adamw_load(opt.get(), nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    // A 32-bit optimizer refuses the 8-bit file, a different layout refuses it too.
    auto o32 = make_opt(hyper(QLORA_OPTIM_STATE_F32), nullptr, pb.sizes);
    EXPECT_EQ(qlora_adamw_load(o32.get(), good.string().c_str()), QLORA_ERROR_INVALID_ARGUMENT);
    auto other = make_opt(hp, nullptr, {1000, 300});
    EXPECT_EQ(qlora_adamw_load(other.get(), good.string().c_str()), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "buffer 0 has 300 elements in the file but 1000")) << qlora_last_error();

    // After all that, the optimizer continues exactly like one that never saw a bad file.
    qlora_adamw_info info{};
    ASSERT_EQ(qlora_adamw_get_info(opt.get(), &info), QLORA_OK);
    EXPECT_EQ(info.step, 10);
    EXPECT_EQ(info.failed, 0);
    run_steps(ctx.get(), opt.get(), pb, params, 10, 20);
    auto ref_opt = make_opt(hp, nullptr, pb.sizes);
    Buffers ref = pb.init;
    run_steps(ctx.get(), ref_opt.get(), pb, ref, 0, 20);
    EXPECT_TRUE(bit_equal(params, ref));
}

TEST(AdamwIo, SaveIsAtomic) {
    Problem pb({5000, 70001}, 85);
    auto ctx = make_context(QLORA_BACKEND_CPU);
    auto opt = make_opt(hyper(QLORA_OPTIM_STATE_F32), nullptr, pb.sizes);
    Buffers params = pb.init;
    run_steps(ctx.get(), opt.get(), pb, params, 0, 2);
    TempDir dir;
    const fs::path path = dir.path / "opt.state";
    ASSERT_EQ(qlora_adamw_save(opt.get(), path.string().c_str()), QLORA_OK) << qlora_last_error();
    const auto old_bytes = file_bytes(path);
    ASSERT_GT(old_bytes.size(), 500000u);
    run_steps(ctx.get(), opt.get(), pb, params, 2, 3);

    // The file system refuses to grow a file past 100 kB half-way through the write.
    struct rlimit saved {};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = 100000;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    const qlora_status st = qlora_adamw_save(opt.get(), path.string().c_str());
    const std::string msg = qlora_last_error();
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_EQ(st, QLORA_ERROR_IO);
    EXPECT_TRUE(contains(msg, "opt.state.tmp-")) << msg;
    EXPECT_EQ(file_bytes(path), old_bytes); // the previous file is intact
    EXPECT_EQ(entries(dir.path), std::vector<std::string>{"opt.state"});

    // A target that cannot be replaced (a non-empty directory) and a missing directory.
    const fs::path blocked = dir.path / "blocked";
    fs::create_directories(blocked / "x");
    EXPECT_EQ(qlora_adamw_save(opt.get(), blocked.string().c_str()), QLORA_ERROR_IO);
    EXPECT_TRUE(contains(qlora_last_error(), "rename")) << qlora_last_error();
    EXPECT_EQ(entries(dir.path), (std::vector<std::string>{"blocked", "opt.state"}));
    EXPECT_EQ(qlora_adamw_save(opt.get(), (dir.path / "no" / "such" / "dir.state").string().c_str()), QLORA_ERROR_IO);
    EXPECT_EQ(qlora_adamw_save(opt.get(), nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_adamw_save(opt.get(), ""), QLORA_ERROR_INVALID_ARGUMENT);
    // The successful save after all that replaces the file.
    ASSERT_EQ(qlora_adamw_save(opt.get(), path.string().c_str()), QLORA_OK);
    EXPECT_NE(file_bytes(path), old_bytes);
}

TEST(AdamwIo, AStepThatFailsHalfWayPoisonsTheOptimizerUntilALoad) {
    Problem pb({70001, 5000}, 87);
    pb.cache_grads(12);
    auto ctx = make_context(QLORA_BACKEND_CPU);
    const qlora_adamw_params hp = hyper(QLORA_OPTIM_STATE_F32);
    TempDir dir;
    const std::string ckpt = (dir.path / "opt.state").string();
    auto pager = make_pager(dir.path / "spill", 4 * 4096, 4096);
    auto opt = make_opt(hp, pager.get(), pb.sizes);
    Buffers params = pb.init;
    run_steps(ctx.get(), opt.get(), pb, params, 0, 4);
    ASSERT_EQ(qlora_adamw_save(opt.get(), ckpt.c_str()), QLORA_OK);
    const Buffers at4 = params;
    run_steps(ctx.get(), opt.get(), pb, params, 4, 6);

    // Corrupt the spilled copy of buffer 1's first page (buffer 0's pages come first in a step).
    auto & h = dynamic_cast<qlora::HostSpillPager &>(*pager->impl);
    const int64_t off = h.spill_offset(opt->buffers[1].alloc_id, 0);
    ASSERT_GE(off, 0);
    const int fd = ::open(h.spill_path().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t b = 0;
    ASSERT_EQ(::pread(fd, &b, 1, off + 33), 1);
    b ^= 0x04;
    ASSERT_EQ(::pwrite(fd, &b, 1, off + 33), 1);
    ::close(fd);

    Buffers g = pb.grads(7);
    auto pv = views(params), gv = views(g);
    EXPECT_EQ(qlora_adamw_step(ctx.get(), opt.get(), pv.data(), gv.data(), 2, nullptr), QLORA_ERROR_FORMAT);
    EXPECT_TRUE(contains(qlora_last_error(), h.spill_path())) << qlora_last_error();
    qlora_adamw_info info{};
    ASSERT_EQ(qlora_adamw_get_info(opt.get(), &info), QLORA_OK);
    EXPECT_EQ(info.failed, 1);
    EXPECT_EQ(info.step, 6);
    EXPECT_EQ(qlora_adamw_step(ctx.get(), opt.get(), pv.data(), gv.data(), 2, nullptr), QLORA_ERROR_FORMAT);
    EXPECT_TRUE(contains(qlora_last_error(), "unusable")) << qlora_last_error();
    EXPECT_EQ(qlora_adamw_save(opt.get(), (dir.path / "x.state").string().c_str()), QLORA_ERROR_FORMAT);
    EXPECT_FALSE(fs::exists(dir.path / "x.state"));

    // Recover: load the step-4 checkpoint (overwrites every page, the bad one too)
    // and continue from the step-4 parameters: same as a run that never failed.
    ASSERT_EQ(qlora_adamw_load(opt.get(), ckpt.c_str()), QLORA_OK) << qlora_last_error();
    ASSERT_EQ(qlora_adamw_get_info(opt.get(), &info), QLORA_OK);
    EXPECT_EQ(info.failed, 0);
    params = at4;
    run_steps(ctx.get(), opt.get(), pb, params, 4, 12);
    auto ref_opt = make_opt(hp, nullptr, pb.sizes);
    Buffers ref = pb.init;
    run_steps(ctx.get(), ref_opt.get(), pb, ref, 0, 12);
    EXPECT_TRUE(bit_equal(params, ref));
}
