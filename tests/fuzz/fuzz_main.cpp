// The libFuzzer entry point of one harness, chosen at compile time
// (QLORA_FUZZ_HARNESS=qfuzz_<target>); see harness/fuzz_common.hpp.
#include "harness/fuzz_common.hpp"

#include <cstdlib>

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    // The harness's own failures abort (default handler); make sure the
    // library sees the same environment every run.
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    return qfuzz::QLORA_FUZZ_HARNESS(data, size);
}
