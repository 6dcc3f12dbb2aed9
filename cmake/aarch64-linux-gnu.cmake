# Cross-compiling for arm64 with Debian's cross toolchain
# (crossbuild-essential-arm64). The arm64 libraries come from a folder of
# unpacked Debian packages, SIDETRACE_ARM64_SYSROOT (scripts/test-arm64.sh
# fills it); the C and C++ runtime come from the toolchain itself.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# try_compile projects see the sysroot too.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES SIDETRACE_ARM64_SYSROOT)
if(NOT SIDETRACE_ARM64_SYSROOT)
  message(FATAL_ERROR "set SIDETRACE_ARM64_SYSROOT to the folder of unpacked arm64 packages")
endif()
set(CMAKE_FIND_ROOT_PATH ${SIDETRACE_ARM64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(_lib ${SIDETRACE_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu)
# The libraries' own dependencies (libfmt under libspdlog, ...) are found
# through rpath-link when linking, and through LD_LIBRARY_PATH under qemu.
string(APPEND CMAKE_EXE_LINKER_FLAGS_INIT
       " -Wl,-rpath-link,${_lib} -Wl,-rpath-link,${SIDETRACE_ARM64_SYSROOT}/lib/aarch64-linux-gnu")
string(APPEND CMAKE_SHARED_LINKER_FLAGS_INIT " -Wl,-rpath-link,${_lib}")
# Headers that find modules locate by name (toml++, CLI11, msgpack, ...),
# and the architecture's own (openssl/opensslconf.h).
include_directories(SYSTEM ${SIDETRACE_ARM64_SYSROOT}/usr/include/aarch64-linux-gnu
                    ${SIDETRACE_ARM64_SYSROOT}/usr/include)

# protoc runs on the build machine.
set(Protobuf_PROTOC_EXECUTABLE /usr/bin/protoc CACHE FILEPATH "" FORCE)

set(ENV{PKG_CONFIG_SYSROOT_DIR} ${SIDETRACE_ARM64_SYSROOT})
set(ENV{PKG_CONFIG_LIBDIR} "${_lib}/pkgconfig:${SIDETRACE_ARM64_SYSROOT}/usr/share/pkgconfig")

# Tests (and gtest's test discovery) run under qemu-user.
set(CMAKE_CROSSCOMPILING_EMULATOR
    qemu-aarch64;-L;/usr/aarch64-linux-gnu;-E;LD_LIBRARY_PATH=${_lib}:${SIDETRACE_ARM64_SYSROOT}/lib/aarch64-linux-gnu)

# Binaries find their libraries through LD_LIBRARY_PATH above, not rpaths.
set(CMAKE_SKIP_RPATH ON)
