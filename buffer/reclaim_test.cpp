#include "buffer/reclaim.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "buffer/testing/temp_dir.h"
#include "common/wait_until.h"

namespace sidetrace::buffer {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// Writes `bytes` of data to `path`, then preallocates `extra` bytes past its
// end as RocksDB does for WAL files (FALLOC_FL_KEEP_SIZE).
void make_file(const fs::path& path, size_t bytes, size_t extra = 0) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  std::string chunk(64 << 10, 'x');
  for (size_t done = 0; done < bytes; done += chunk.size())
    ASSERT_EQ(::write(fd, chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
  if (extra > 0) {
    ASSERT_EQ(
        ::fallocate(fd, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(bytes), static_cast<off_t>(extra)),
        0);
  }
  ::close(fd);
}

bool empty_dir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_empty(dir, ec) && !ec;
}

ReclaimOptions options(const TempDir& dir, uint64_t step = 64 << 10) {
  ReclaimOptions o;
  o.trash_dir = (dir.path() / "reclaim").string();
  o.step_bytes = step;
  o.pause = std::chrono::microseconds(0);
  return o;
}

class ReclaimTest : public ::testing::Test {
 protected:
  TempDir dir_;
  rocksdb::IOOptions io_;
};

TEST_F(ReclaimTest, AWalFileIsMovedAsideAndFreedInStepsPreallocationIncluded) {
  fs::path wal = dir_.path() / "000012.log";
  make_file(wal, 1 << 20, 1 << 20);
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), options(dir_));
  rfs.start();

  ASSERT_TRUE(rfs.DeleteFile(wal.string(), io_, nullptr).ok());
  EXPECT_FALSE(fs::exists(wal)) << "the name must be gone when DeleteFile returns";
  ASSERT_TRUE(wait_until([&] { return rfs.stats().reclaimed_files == 1; }));
  ReclaimStats st = rfs.stats();
  EXPECT_EQ(st.deferred_files, 1u);
  EXPECT_GE(st.reclaimed_bytes, 2u << 20);
  // 2 MiB in 64 KiB steps: the preallocated MiB is stepped through too, not
  // freed whole by the first step.
  EXPECT_GE(st.steps, 32u);
  EXPECT_EQ(st.pending_files, 0u);
  EXPECT_EQ(st.pending_bytes, 0u);
  EXPECT_EQ(st.errors, 0u);
  EXPECT_TRUE(empty_dir(dir_.path() / "reclaim"));
}

TEST_F(ReclaimTest, AStepLargerThanTheFileFreesItInOne) {
  fs::path wal = dir_.path() / "000013.log";
  make_file(wal, 1 << 20, 1 << 20);
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), options(dir_, UINT64_MAX));
  rfs.start();
  ASSERT_TRUE(rfs.DeleteFile(wal.string(), io_, nullptr).ok());
  ASSERT_TRUE(wait_until([&] { return rfs.stats().reclaimed_files == 1; }));
  EXPECT_EQ(rfs.stats().steps, 1u);
  EXPECT_GE(rfs.stats().reclaimed_bytes, 2u << 20);
}

TEST_F(ReclaimTest, TableFilesAreDeferredAndOtherFilesDeletedAtOnce) {
  fs::path sst = dir_.path() / "000031.sst";
  fs::path manifest = dir_.path() / "MANIFEST-000005";
  make_file(sst, 256 << 10);
  make_file(manifest, 64 << 10);
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), options(dir_));
  rfs.start();

  ASSERT_TRUE(rfs.DeleteFile(manifest.string(), io_, nullptr).ok());
  EXPECT_FALSE(fs::exists(manifest));
  EXPECT_EQ(rfs.stats().deferred_files, 0u);

  ASSERT_TRUE(rfs.DeleteFile(sst.string(), io_, nullptr).ok());
  EXPECT_FALSE(fs::exists(sst));
  EXPECT_EQ(rfs.stats().deferred_files, 1u);
  EXPECT_TRUE(wait_until([&] { return empty_dir(dir_.path() / "reclaim"); }));
}

TEST_F(ReclaimTest, DeletingAMissingFileFails) {
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), options(dir_));
  rfs.start();
  EXPECT_FALSE(rfs.DeleteFile((dir_.path() / "000099.log").string(), io_, nullptr).ok());
  EXPECT_EQ(rfs.stats().deferred_files, 0u);
}

TEST_F(ReclaimTest, FilesLeftByAnEarlierRunAreReclaimedOnlyOnceStarted) {
  fs::create_directories(dir_.path() / "reclaim");
  fs::path left = dir_.path() / "reclaim" / "000007.log";
  make_file(left, 128 << 10);
  fs::path wal = dir_.path() / "000008.log";
  make_file(wal, 128 << 10);
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), options(dir_));
  // Before start() (the store is not open yet, its lock not held), nothing
  // in the trash is touched; deletions wait.
  ASSERT_TRUE(rfs.DeleteFile(wal.string(), io_, nullptr).ok());
  EXPECT_EQ(rfs.stats().pending_files, 1u);
  EXPECT_TRUE(fs::exists(left));
  rfs.start();
  EXPECT_TRUE(wait_until([&] { return rfs.stats().reclaimed_files == 2; }));
  EXPECT_EQ(rfs.stats().deferred_files, 2u);  // each once
  EXPECT_EQ(rfs.stats().errors, 0u);
  EXPECT_TRUE(empty_dir(dir_.path() / "reclaim"));
}

TEST_F(ReclaimTest, AFileWithAnotherLinkKeepsItsData) {
  fs::path sst = dir_.path() / "000040.sst";
  fs::path copy = dir_.path() / "checkpoint-000040.sst";
  make_file(sst, 512 << 10);
  fs::create_hard_link(sst, copy);
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), options(dir_));
  rfs.start();

  ASSERT_TRUE(rfs.DeleteFile(sst.string(), io_, nullptr).ok());
  ASSERT_TRUE(wait_until([&] { return rfs.stats().reclaimed_files == 1; }));
  EXPECT_EQ(fs::file_size(copy), 512u << 10);
  EXPECT_EQ(rfs.stats().steps, 0u);
}

TEST_F(ReclaimTest, WhatIsWaitingAtShutdownIsRemoved) {
  ReclaimOptions o = options(dir_, 4 << 10);
  o.pause = std::chrono::seconds(30);  // it would take minutes at this pace
  o.low_space_bytes = 0;
  {
    ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), o);
    rfs.start();
    for (int i = 0; i < 3; ++i) {
      fs::path f = dir_.path() / ("00010" + std::to_string(i) + ".log");
      make_file(f, 256 << 10);
      ASSERT_TRUE(rfs.DeleteFile(f.string(), io_, nullptr).ok());
    }
    EXPECT_EQ(rfs.stats().deferred_files, 3u);
    EXPECT_GE(rfs.stats().pending_files, 2u);
  }
  EXPECT_TRUE(empty_dir(dir_.path() / "reclaim"));
}

TEST_F(ReclaimTest, AboveTheHurryMarkStepsDoNotPause) {
  ReclaimOptions o = options(dir_, 64 << 10);
  o.pause = std::chrono::seconds(30);
  o.hurry_bytes = 0;  // always behind
  o.low_space_bytes = 0;
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), o);
  rfs.start();
  fs::path f = dir_.path() / "000200.log";
  make_file(f, 1 << 20);
  ASSERT_TRUE(rfs.DeleteFile(f.string(), io_, nullptr).ok());
  EXPECT_TRUE(wait_until([&] { return rfs.stats().reclaimed_files == 1; }));
}

TEST_F(ReclaimTest, OnAFilesystemShortOfSpaceStepsDoNotPause) {
  ReclaimOptions o = options(dir_, 64 << 10);
  o.pause = std::chrono::seconds(30);
  o.low_space_bytes = UINT64_MAX;  // never enough free space
  ReclaimingFileSystem rfs(rocksdb::FileSystem::Default(), o);
  rfs.start();
  fs::path f = dir_.path() / "000201.log";
  make_file(f, 1 << 20);
  ASSERT_TRUE(rfs.DeleteFile(f.string(), io_, nullptr).ok());
  EXPECT_TRUE(wait_until([&] { return rfs.stats().reclaimed_files == 1; }));
}

}  // namespace
}  // namespace sidetrace::buffer
