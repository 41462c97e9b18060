// The flat checkpoint format: the flat float32 buffers of a training run (parameters and the two
// AdamW moments, laid out by ParameterLayout::gpt_neox), cut into contiguous per-rank slices as a
// run with ZeRO sharding holds them, so that each rank writes only what it owns and a run on any
// number of ranks can read back any range (resharding). HDF5, readable with h5py.
//
// A directory `<name>/`:
//   rank-RRRRR-of-NNNNN.h5   one file per rank r of N (five digits each)
//   COMPLETE                 JSON {"format", "format_version", "world", "total"}, written last
//
// Each rank file has root attributes `format` = "dijiang-flat-shard" (string), `format_version` =
// 1, `rank`, `world`, `begin`, `end`, `total` (int64), `config` (JSON string: the model's Hugging
// Face config) and `metadata` (JSON string; a training checkpoint's has kind "training", step,
// data_epoch, data_position, bad_steps, experiment), and three 1-D float32 datasets `parameters`,
// `optimizer.m`, `optimizer.v` of end - begin values: the slice [begin, end) of the flat buffers,
// whose full length is `total`. A rank may own no values (begin == end, empty datasets). Together
// the files cover [0, total) contiguously in rank order, with identical config and metadata.
//
// Writing: every rank writes its file into a shared staging directory (a hidden sibling of the
// final one, see flat_staging_dir), each file atomically; after a barrier rank 0 checks the set,
// adds COMPLETE and renames the staging directory into place, so that the final name only ever
// holds a complete checkpoint. Readers refuse a directory without COMPLETE.
//
// Per-rank files rather than one file through parallel HDF5: Debian's HDF5 is serial, independent
// files need no collective I/O, and each can be written and renamed atomically on its own.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/checkpoint/native.h"
#include "trainer/model/parameters.h"  // flat_shard_range

namespace dj {

inline constexpr int64_t kFlatFormatVersion = 1;
inline constexpr int kMaxFlatRanks = 99999;  // file names have five digits

// The datasets of a rank file.
inline constexpr const char* kFlatParameters = "parameters";
inline constexpr const char* kFlatMomentM = "optimizer.m";
inline constexpr const char* kFlatMomentV = "optimizer.v";

struct FlatShardHeader {
  int rank = 0;
  int world = 1;
  int64_t begin = 0, end = 0;  // this rank's slice [begin, end) of the flat buffers
  int64_t total = 0;           // the length of the full buffers
  nlohmann::json config;       // the model's Hugging Face config (ModelConfig::to_hf_json)
  nlohmann::json metadata = nlohmann::json::object();
};

// "rank-00002-of-00004.h5".
std::string flat_shard_name(int rank, int world);


// The staging directory for `final_dir`: the hidden sibling `.<name>.partial`.
std::filesystem::path flat_staging_dir(const std::filesystem::path& final_dir);

// Removes a stale staging directory (left by an interrupted save) and creates it empty; rank 0
// calls it before the barrier that precedes the ranks' writes. Refuses a path whose name is not
// a staging name (`.<name>.partial`), so that it can never delete anything else.
void reset_flat_staging_dir(const std::filesystem::path& staging_dir);

// Removes the staging directory if present (after a failed save); same refusal as above.
void clear_flat_staging_dir(const std::filesystem::path& staging_dir);

// Writes this rank's file atomically into the existing `staging_dir`. `params`, `m` and `v` point
// at this rank's header.end - header.begin values (they may be null when that is 0). Any number
// of ranks may write into the same directory at once.
void write_flat_shard(const std::filesystem::path& staging_dir, const FlatShardHeader& header,
                      const float* params, const float* m, const float* v);

// Called by one rank after all `world` ranks have written (the caller synchronises): checks that
// every rank file is present and readable, that together they cover [0, total) contiguously with
// identical config and metadata, writes COMPLETE and renames `staging_dir` to `final_dir`. An
// existing flat checkpoint at `final_dir` is replaced atomically (a complete checkpoint stays at
// `final_dir` throughout); any other non-empty directory there is refused. The staging directory
// is gone afterwards. On failure `final_dir` is left as it was.
void finish_flat_checkpoint(const std::filesystem::path& staging_dir,
                            const std::filesystem::path& final_dir, int world);

// Reads a complete flat checkpoint. Opening validates the whole set (marker, file names, every
// file's attributes and datasets, contiguity, identical config and metadata); failures throw
// dj::Error naming the offending file.
class FlatCheckpointReader {
 public:
  explicit FlatCheckpointReader(const std::filesystem::path& dir);
  ~FlatCheckpointReader();
  FlatCheckpointReader(FlatCheckpointReader&&) noexcept;
  FlatCheckpointReader& operator=(FlatCheckpointReader&&) noexcept;

  const std::filesystem::path& path() const;
  const nlohmann::json& config() const;
  const nlohmann::json& metadata() const;
  int64_t total() const;
  int world() const;
  // The slice [begin, end) that rank `rank` of this checkpoint wrote.
  std::pair<int64_t, int64_t> shard_range(int rank) const;

  // Copies values [begin, end) of `dataset` (kFlatParameters, kFlatMomentM or kFlatMomentV) to
  // `out`, reading only that part of each rank file it spans.
  void read(const std::string& dataset, int64_t begin, int64_t end, float* out) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The rank files of the complete flat checkpoint `dir`, in rank order, after checking its marker
// and that no rank file is missing or extra. Reads no HDF5.
std::vector<std::filesystem::path> flat_checkpoint_files(const std::filesystem::path& dir);

// True for a directory holding rank-*-of-*.h5 files (complete or not).
bool is_flat_checkpoint(const std::filesystem::path& path);

// One native checkpoint with everything a flat checkpoint holds: the model's tensors (named and
// shaped by ParameterLayout::gpt_neox of its config), `optimizer.m.<name>` and
// `optimizer.v.<name>`, all float32, and the same config and metadata: what the single-process
// trainer writes, so the result resumes.
NativeCheckpoint merge_flat_checkpoint(const std::filesystem::path& dir);

// The reverse: a training checkpoint (native file or directory, or a flat checkpoint to reshard)
// as a flat checkpoint of `ranks` balanced slices at `out_dir`. Refuses a checkpoint that is not
// kind "training" or lacks optimizer state.
void split_to_flat_checkpoint(const std::filesystem::path& training_checkpoint,
                              const std::filesystem::path& out_dir, int ranks);

}  // namespace dj
