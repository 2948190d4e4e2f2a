# Cross-compiling the native core for linux-arm64 with Debian's toolchain
# (apt-get install g++-aarch64-linux-gnu qemu-user). Binaries run under
# qemu-user, so CTest (and gtest_discover_tests) execute the aarch64 test
# binary through CMAKE_CROSSCOMPILING_EMULATOR.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(QLORA_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER   ${QLORA_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${QLORA_CROSS_TRIPLE}-g++)

# Debian's multiarch-less cross sysroot.
set(CMAKE_FIND_ROOT_PATH /usr/${QLORA_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/${QLORA_CROSS_TRIPLE})

# Debian ships GoogleTest as sources (libgtest-dev: /usr/src/googletest); the
# x86-64 libgtest.a cannot link into an aarch64 binary, so tests/native builds
# it from source for the target.
set(QLORA_GTEST_SOURCE_DIR /usr/src/googletest CACHE PATH "GoogleTest sources to build for the target")
