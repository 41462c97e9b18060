// Checksums of checkpoint files: every HDF5 file the checkpoint writers produce (native files and
// shards, flat rank files) carries a digest of its own bytes, checked before HDF5 parses anything,
// so that a file whose bytes changed after it was written (bit rot, a partial or damaged copy) is
// refused with a message instead of reaching the HDF5 library, which may crash on it.
//
// The digest lives in the file's first 512 bytes, reserved as an HDF5 user block: HDF5 skips it
// (h5py, h5dump and h5ls read such files unchanged). The block holds this text, then zero bytes:
//
//   dijiang-checksum 1\n
//   xxh3-128 <32 lowercase hex digits>\n
//   bytes <decimal count>\n
//
// The digest is XXH3-128 of the bytes after the block, the HDF5 file proper, whose length is
// `bytes`. It is the canonical (big-endian) form `xxhsum -H2` prints, so any copy can be checked
// without this program: `tail -c +513 FILE | xxhsum -H2`. Any other content of the block (a
// changed byte in the padding included) counts as damage. A file that starts with the HDF5
// signature instead has no checksum (older writers, other programs): readers accept it and warn.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace dj {

// The size of the user block HDF5 must reserve for the checksum (H5Pset_userblock).
inline constexpr uint64_t kChecksumBlockBytes = 512;

struct FileChecksum {
  bool sealed = false;   // false: no checksum (an HDF5 file without the block)
  std::string digest;    // 32 hex digits when sealed
  uint64_t bytes = 0;    // the file's size
};

// Computes the digest of the bytes after the reserved block of `path`, which must be a closed HDF5
// file created with a kChecksumBlockBytes user block, and writes the header into the block. The
// block may hold a checksum header already: a file changed on purpose (its attributes edited with
// h5py, say) is sealed again this way. Throws dj::Error naming the file if it cannot.
FileChecksum seal_checkpoint_file(const std::filesystem::path& path);

// What verify_checkpoint_file reads: every byte, or only the header and the file's size (for a
// file this job has just written, where reading it all back would cost a pass over the disk).
enum class ChecksumCheck { bytes, header };

// Checks the checksum of `path` against its bytes: throws dj::Error "<path>: ..." if the file
// changed after it was written (digest or size differ, damaged header), is not a checkpoint file,
// or cannot be read. A file without a checksum (starting with the HDF5 signature) passes, with a
// warning logged once per file. Verified files are remembered by device, inode, size and
// modification time, so checking one again while it is unchanged costs a stat.
FileChecksum verify_checkpoint_file(const std::filesystem::path& path,
                                    ChecksumCheck check = ChecksumCheck::bytes);

// Whether `path` is a regular file that starts like a checkpoint file (a checksum header or the
// HDF5 signature); reads 16 bytes, verifies nothing.
bool looks_like_checkpoint_file(const std::filesystem::path& path);

}  // namespace dj
