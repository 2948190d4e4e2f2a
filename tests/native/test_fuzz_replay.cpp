// Replays the fuzz corpora through the fuzz harnesses (tests/fuzz/harness):
// every committed seed (tests/fuzz/corpus/<target>/) and every input that
// once broke the library (tests/fuzz/regressions/<target>/, each with the fix
// that made it pass). A harness checks the ABI contract on every call it
// makes; here a broken contract is a test failure naming the input, and in
// the sanitizer build (preset linux-x64-asan) ASan/UBSan/LSan watch the same
// inputs, so every regression input is tested under the sanitizers in CI
// without libFuzzer.
#include "harness/fuzz_common.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct HarnessFailure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_failure(const std::string & message) { throw HarnessFailure(message); }

std::vector<fs::path> inputs_in(const fs::path & dir) {
    std::vector<fs::path> out;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return out;
    for (const auto & e : fs::directory_iterator(dir))
        if (e.is_regular_file() && e.path().filename().string()[0] != '.' && e.path().extension() != ".md")
            out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<uint8_t> bytes_of(const fs::path & p) {
    std::ifstream f(p, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Runs one input; returns the contract violation or "".
std::string replay(const qfuzz::Target & t, const fs::path & input) {
    const std::vector<uint8_t> b = bytes_of(input);
    qfuzz::set_failure_handler(throw_failure);
    std::string failure;
    try {
        t.run(b.data(), b.size());
    } catch (const HarnessFailure & e) {
        failure = e.what();
    }
    qfuzz::set_failure_handler(nullptr);
    return failure;
}

class FuzzReplay : public ::testing::TestWithParam<qfuzz::Target> {};

TEST_P(FuzzReplay, CorpusAndRegressionsKeepTheContract) {
    const qfuzz::Target & t = GetParam();
    const fs::path root = QLORA_FUZZ_DIR;
    const auto corpus = inputs_in(root / "corpus" / t.name);
    const auto regressions = inputs_in(root / "regressions" / t.name);
    ASSERT_FALSE(corpus.empty()) << "no seed inputs in " << (root / "corpus" / t.name)
                                 << " (regenerate with qlora_fuzz_seeds, see tests/fuzz/README.md)";
    for (const auto * list : {&corpus, &regressions})
        for (const auto & input : *list) {
            const std::string failure = replay(t, input);
            EXPECT_EQ(failure, "") << "input " << input;
        }
    RecordProperty("inputs", static_cast<int>(corpus.size() + regressions.size()));
}

INSTANTIATE_TEST_SUITE_P(All, FuzzReplay, ::testing::ValuesIn(qfuzz::targets()),
                         [](const ::testing::TestParamInfo<qfuzz::Target> & i) { return std::string(i.param.name); });

// The harnesses must be able to fail: each gets an input that breaks one of
// its own checks when the library's answer is tampered with. Here: the
// contract check itself rejects what a broken library would return.
TEST(FuzzHarness, StatusContractCatchesViolations) {
    qfuzz::set_failure_handler(throw_failure);
    // INTERNAL is a bug.
    EXPECT_THROW(qfuzz::check_status(QLORA_ERROR_INTERNAL, "qlora_x"), HarnessFailure);
    // A failure must carry a message naming the function: qlora_last_error() is "" after a successful call.
    qlora_context_params p = qlora_context_default_params();
    qlora_context_t c = nullptr;
    ASSERT_EQ(qlora_context_create(&p, &c), QLORA_OK);
    EXPECT_THROW(qfuzz::check_status(QLORA_ERROR_FORMAT, "qlora_x"), HarnessFailure);
    // A status outside the allowed set.
    ASSERT_EQ(qlora_context_get_info(nullptr, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_THROW(qfuzz::check_status(QLORA_ERROR_INVALID_ARGUMENT, "qlora_context_get_info", {QLORA_ERROR_FORMAT}),
                 HarnessFailure);
    // ... and a message that names another function.
    EXPECT_THROW(qfuzz::check_status(QLORA_ERROR_INVALID_ARGUMENT, "qlora_context_create"), HarnessFailure);
    EXPECT_NO_THROW(qfuzz::check_status(QLORA_ERROR_INVALID_ARGUMENT, "qlora_context_get_info"));
    // A value that is not a qlora_status at all.
    qlora_status bogus;
    const int32_t v = 77;
    std::memcpy(&bogus, &v, sizeof v);
    EXPECT_THROW(qfuzz::check_status(bogus, "qlora_context_get_info"), HarnessFailure);
    qlora_context_free(c);
    qfuzz::set_failure_handler(nullptr);
}

} // namespace
