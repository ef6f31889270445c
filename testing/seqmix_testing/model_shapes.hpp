// Named model shapes shared by tests and benchmarks, so a benchmark's "Mamba2-2.7B" is the same
// shape a test sweeps. Each family adds its table here as it lands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace seqmix::testing {

// Selective state-space shapes (Mamba-1 uses D and N; Mamba-2 uses H, P, N, G).
struct SsmShape {
  std::string name;
  std::int64_t D, N;  // Mamba-1 channels and state size
  std::int64_t H, P, G;  // Mamba-2 heads, head size, B/C groups
  std::int64_t conv_width;
};

inline const std::vector<SsmShape>& ssm_shapes() {
  static const std::vector<SsmShape> shapes = {
      // Mamba-2 2.7B: d_model 2560, expand 2 -> 5120 channels = 80 heads of 64; d_state 128.
      {"mamba2-2.7b", 5120, 128, 80, 64, 1, 4},
      // Mamba-2 780M: d_model 1536, expand 2 -> 48 heads of 64, d_state 128; its conv1d runs
      // over d_inner + 2 * d_state = 3328 channels.
      {"mamba2-780m", 3072, 128, 48, 64, 1, 4},
      // Mamba-1 130M: d_model 768, expand 2 -> 1536 channels, d_state 16.
      {"mamba-130m", 1536, 16, 0, 0, 1, 4},
      // A wide SSD layer: 128 heads of 80, d_state 128.
      {"ssd-h128-p80", 10240, 128, 128, 80, 1, 4},
  };
  return shapes;
}

// Linear-attention family shapes (H heads, K key size, V value size, HV value heads).
struct LinearAttentionShape {
  std::string name;
  std::int64_t H, K, V, HV;
};

inline const std::vector<LinearAttentionShape>& linear_attention_shapes() {
  static const std::vector<LinearAttentionShape> shapes = {
      {"gla-1.3b", 32, 64, 64, 32},
      {"gla-k128", 16, 128, 128, 16},
      {"gated-deltanet-h32", 32, 128, 128, 32},
      {"qwen3-next-gdn", 16, 128, 128, 32},
      {"rwkv-h32-k64", 32, 64, 64, 32},
  };
  return shapes;
}

// Softmax attention shapes (Hq query heads, Hkv KV heads, D head size).
struct AttentionShape {
  std::string name;
  std::int64_t Hq, Hkv, D;
};

inline const std::vector<AttentionShape>& attention_shapes() {
  static const std::vector<AttentionShape> shapes = {
      {"llama3-8b", 32, 8, 128},
      {"mistral-7b", 32, 8, 128},
      {"qwen2-0.5b", 14, 2, 64},
  };
  return shapes;
}

}  // namespace seqmix::testing
