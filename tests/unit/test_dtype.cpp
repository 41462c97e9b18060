#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/core/dtype.h"
#include "kernels/core/tensor.h"

namespace dj {

TEST(DType, HalfRoundTripsEveryBitPattern) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float value = half_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(value))));
      continue;
    }
    EXPECT_EQ(float_to_half(value), bits) << "bits " << bits;
  }
}

TEST(DType, HalfRoundsToNearestEven) {
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 1.0f / 2048)), 1.0f);  // halfway, even below
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);
  EXPECT_EQ(half_to_float(float_to_half(65520.0f)), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(float_to_half(65519.0f)), 65504.0f);
  EXPECT_EQ(half_to_float(float_to_half(std::ldexp(1.0f, -25))), 0.0f);
  EXPECT_EQ(half_to_float(float_to_half(std::ldexp(1.5f, -25))), std::ldexp(1.0f, -24));
}

TEST(DType, Bf16RoundTripsAndRounds) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float value = bf16_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(value)) continue;
    EXPECT_EQ(float_to_bf16(value), bits);
  }
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 2.0f / 128);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DType, NamesRoundTrip) {
  for (const char* name : {"F64", "F32", "F16", "BF16", "I64", "I32", "U16", "U8", "BOOL"}) {
    auto dtype = dtype_from_name(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(dtype_name(*dtype), name);
  }
  EXPECT_FALSE(dtype_from_name("F8").has_value());
}

TEST(Tensor, ConvertsBetweenTypes) {
  Tensor t = Tensor::from_vector<float>({1.5f, -2.25f, 65504.0f, 3.0f}, {2, 2});
  Tensor h = t.to(DType::F16);
  EXPECT_EQ(h.to(DType::F32).to_f64_vector(), t.to_f64_vector());
  EXPECT_EQ(t.to(DType::I64).to_f64_vector(), (std::vector<double>{1, -2, 65504, 3}));
  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(t.reshaped({3}), Error);
  EXPECT_EQ(t.reshaped({4}).shape(), (Shape{4}));
}

}  // namespace dj
