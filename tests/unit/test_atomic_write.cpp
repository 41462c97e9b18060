#include <gtest/gtest.h>

#include <filesystem>
#include <initializer_list>
#include <set>
#include <stdexcept>
#include <string>

#include "kernels/core/error.h"
#include "tests/unit/checkpoint_test_support.h"
#include "trainer/checkpoint/atomic_write.h"

namespace dj {
namespace {

namespace fs = std::filesystem;
using test::fails_with;
using test::read_bytes;
using test::TempDir;
using test::write_bytes;

// Every name in `dir`, hidden ones included: temporaries start with a dot.
std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    names.insert(entry.path().filename().string());
  return names;
}

// A directory writer that leaves `bytes` in a file `name` (and a nested file, so that syncing
// reaches below the top level).
AtomicWriter writer_of(const std::string& name, const std::string& bytes) {
  return [=](const fs::path& temp) {
    write_bytes(temp / name, bytes);
    fs::create_directory(temp / "sub");
    write_bytes(temp / "sub" / "nested", bytes);
  };
}

const ReplacePolicy kAlways = [](const fs::path&) { return true; };
const ReplacePolicy kNever = [](const fs::path&) { return false; };

// ---------------------------------------------------------------------------------------------
// Files

TEST(AtomicWrite, FileIsWrittenAndReplaced) {
  const TempDir dir;
  const fs::path file = dir / "out.bin";
  write_file_atomically(file, [](const fs::path& temp) { write_bytes(temp, "first"); });
  EXPECT_EQ(read_bytes(file), "first");
  write_file_atomically(file, [&](const fs::path& temp) {
    EXPECT_EQ(temp.parent_path(), file.parent_path());  // same file system: the rename is atomic
    EXPECT_FALSE(fs::exists(temp));
    write_bytes(temp, "second");
  });
  EXPECT_EQ(read_bytes(file), "second");
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out.bin"});
}

TEST(AtomicWrite, TextIsWrittenWholeAndReplaced) {
  const TempDir dir;
  const fs::path file = dir / "report.json";
  const std::string text = std::string("{\"a\": 1}\n") + std::string(1, '\0') + "tail";
  write_text_atomically(file, text);
  EXPECT_EQ(read_bytes(file), text);
  write_text_atomically(file, "second\n");
  EXPECT_EQ(read_bytes(file), "second\n");
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"report.json"});
  EXPECT_THROW(write_text_atomically(dir / "missing" / "report.json", "x"), Error);
}

TEST(AtomicWrite, FileWriterThatThrowsLeavesTargetAndNoTemporary) {
  const TempDir dir;
  const fs::path file = dir / "out.bin";
  write_bytes(file, "old");
  EXPECT_THROW(write_file_atomically(file,
                                     [](const fs::path& temp) {
                                       write_bytes(temp, "half");
                                       throw std::runtime_error("disk full");
                                     }),
               std::runtime_error);
  EXPECT_EQ(read_bytes(file), "old");
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out.bin"});
}

TEST(AtomicWrite, FileWriterThatCreatesNothingIsAnError) {
  const TempDir dir;
  const fs::path file = dir / "out.bin";
  EXPECT_TRUE(fails_with([&] { write_file_atomically(file, [](const fs::path&) {}); },
                         file.string() + ": the writer did not create"));
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(AtomicWrite, FileCannotReplaceADirectory) {
  const TempDir dir;
  const fs::path target = dir / "taken";
  fs::create_directory(target);
  write_bytes(target / "keep", "kept");
  EXPECT_TRUE(fails_with(
      [&] { write_file_atomically(target, [](const fs::path& temp) { write_bytes(temp, "x"); }); },
      target.string() + ": cannot rename"));
  EXPECT_EQ(read_bytes(target / "keep"), "kept");
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"taken"});
}

// ---------------------------------------------------------------------------------------------
// Directories

TEST(AtomicWrite, DirectoryIsWrittenWithNestedContent) {
  const TempDir dir;
  const fs::path target = dir / "out";
  write_directory_atomically(target, nullptr, [&](const fs::path& temp) {
    EXPECT_EQ(temp.parent_path(), dir.path());
    EXPECT_TRUE(fs::is_empty(temp));
    writer_of("a", "new")(temp);
  });
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out"});
  EXPECT_EQ(listing(target), (std::set<std::string>{"a", "sub"}));
  EXPECT_EQ(read_bytes(target / "sub" / "nested"), "new");
}

TEST(AtomicWrite, DirectoryWriterThatThrowsLeavesTargetAndNoTemporary) {
  const TempDir dir;
  const fs::path target = dir / "out";
  const auto failing = [](const fs::path& temp) {
    write_bytes(temp / "half", "x");
    throw std::runtime_error("disk full");
  };
  EXPECT_THROW(write_directory_atomically(target, nullptr, failing), std::runtime_error);
  EXPECT_TRUE(listing(dir.path()).empty());

  write_directory_atomically(target, nullptr, writer_of("a", "old"));
  EXPECT_THROW(write_directory_atomically(target, kAlways, failing), std::runtime_error);
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out"});
  EXPECT_EQ(read_bytes(target / "a"), "old");
}

TEST(AtomicWrite, DirectoryReplacementIsRefusedUnlessThePolicyAllowsIt) {
  const TempDir dir;
  const fs::path target = dir / "out";
  fs::create_directory(target);
  write_bytes(target / "keep", "kept");
  int writes = 0;
  const AtomicWriter counting = [&](const fs::path& temp) {
    ++writes;
    write_bytes(temp / "a", "new");
  };
  for (const ReplacePolicy& policy : {ReplacePolicy(), kNever}) {
    EXPECT_TRUE(fails_with([&] { write_directory_atomically(target, policy, counting); },
                           target.string() + ": directory exists and is not empty; refusing"));
  }
  // A policy may refuse with a message of its own.
  const ReplacePolicy explaining = [](const fs::path& existing) -> bool {
    fail("{}: pass --force", existing.string());
  };
  EXPECT_TRUE(fails_with([&] { write_directory_atomically(target, explaining, counting); },
                         target.string() + ": pass --force"));
  EXPECT_EQ(writes, 0);  // refused before any work was done
  EXPECT_EQ(listing(target), std::set<std::string>{"keep"});
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out"});

  fs::path asked_about;
  write_directory_atomically(
      target,
      [&](const fs::path& existing) {
        asked_about = existing;
        return true;
      },
      counting);
  EXPECT_EQ(asked_about, target);
  EXPECT_EQ(listing(target), std::set<std::string>{"a"});  // nothing left of the old one
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out"});
}

TEST(AtomicWrite, EmptyDirectoryIsReplacedWithoutAskingThePolicy) {
  const TempDir dir;
  const fs::path target = dir / "out";
  fs::create_directory(target);
  write_directory_atomically(target, nullptr, writer_of("a", "new"));
  EXPECT_EQ(read_bytes(target / "a"), "new");
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out"});
}

TEST(AtomicWrite, DirectoryNeverReplacesAFileOrSymbolicLink) {
  const TempDir dir;
  const fs::path file = dir / "file";
  write_bytes(file, "kept");
  EXPECT_TRUE(fails_with([&] { write_directory_atomically(file, kAlways, writer_of("a", "x")); },
                         file.string() + ": exists and is not a directory"));
  EXPECT_EQ(read_bytes(file), "kept");

  fs::create_directory(dir / "real");
  fs::create_directory_symlink("real", dir / "link");
  EXPECT_TRUE(fails_with(
      [&] { write_directory_atomically(dir / "link", kAlways, writer_of("a", "x")); },
      "exists and is not a directory"));
  EXPECT_EQ(listing(dir.path()), (std::set<std::string>{"file", "link", "real"}));
}

TEST(AtomicWrite, DirectoryPathWithTrailingSlashNamesTheDirectory) {
  const TempDir dir;
  const fs::path target = dir / "out";
  write_directory_atomically(dir.path() / "out/", nullptr, [&](const fs::path& temp) {
    EXPECT_EQ(temp.parent_path(), dir.path());  // beside "out", not inside it
    writer_of("a", "first")(temp);
  });
  write_directory_atomically(dir.path() / "out/", kAlways, writer_of("b", "second"));
  EXPECT_EQ(listing(dir.path()), std::set<std::string>{"out"});
  EXPECT_EQ(listing(target), (std::set<std::string>{"b", "sub"}));
}

TEST(AtomicWrite, DirectoryNeedsAnExistingParent) {
  const TempDir dir;
  const fs::path target = dir / "no" / "out";
  EXPECT_TRUE(
      fails_with([&] { write_directory_atomically(target, nullptr, writer_of("a", "x")); },
                 target.string() + ": parent directory " + (dir / "no").string() +
                     " does not exist"));
  EXPECT_TRUE(listing(dir.path()).empty());
}

}  // namespace
}  // namespace dj
