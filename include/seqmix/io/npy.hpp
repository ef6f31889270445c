// Reading and writing NumPy .npy files: the storage format of the conformance vectors in golden/
// (SPEC section 7) and a convenient way to move arrays between tests and Python.
//
// Supported: format versions 1.0, 2.0 and 3.0 (3.0 only differs by allowing a UTF-8 header),
// C order, little-endian dtypes '<f4' (float32) and '<i4' (int32), and '<f8' (float64) narrowed
// to float32 when the caller asks for it (NpyF64::narrow_to_f32). Everything else is rejected
// with a seqmix::NpyError whose message starts with the file name and says what is wrong:
//   golden/ssd/b1/x.npy: unsupported dtype '<f2' (supported: '<f4', '<i4', '<f8')
//   golden/ssd/b1/x.npy: truncated data: shape [2, 64, 4, 16] of '<f4' needs 32768 bytes, the file has 1000
//
// File layout (numpy's format spec): 6 magic bytes "\x93NUMPY", one byte major and one byte minor
// version, the header length (uint16 little-endian for 1.0, uint32 for 2.0/3.0), the header (a
// Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with
// spaces and ended by '\n'), then the raw elements in C order.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// The one error type of this header. what() is "<path>: <problem>".
class NpyError : public std::runtime_error {
 public:
  /// `path`: the file (may be empty for an in-memory array); `problem`: what was wrong.
  NpyError(const std::string& path, const std::string& problem)
      : std::runtime_error((path.empty() ? std::string("<npy array>") : path) + ": " + problem),
        path_(path),
        problem_(problem) {}

  /// The file the error concerns.
  const std::string& path() const noexcept { return path_; }
  /// What was wrong, without the path.
  const std::string& problem() const noexcept { return problem_; }

 private:
  std::string path_;
  std::string problem_;
};

/// What read_npy does with a '<f8' (float64) file.
enum class NpyF64 {
  reject,         ///< throw NpyError: the caller expects float32 or int32 data
  narrow_to_f32,  ///< convert each element to float (round to nearest) and store it in NpyArray::f32
};

namespace npy_detail {

inline std::string shape_string(const std::vector<index_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t d = 0; d < shape.size(); ++d) out << (d ? ", " : "") << shape[d];
  out << ']';
  return out.str();
}

inline bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// Copies `count` elements of `size` bytes between little-endian storage and host order.
inline void copy_little_endian(void* dst, const void* src, std::size_t count, std::size_t size) {
  if (count == 0) return;  // empty vectors may hand out null pointers, which memcpy must not see
  std::memcpy(dst, src, count * size);
  if (host_is_little_endian()) return;
  auto* bytes = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < count; ++i)
    for (std::size_t a = 0, b = size - 1; a < b; ++a, --b) std::swap(bytes[i * size + a], bytes[i * size + b]);
}

// A value of the Python literal subset that .npy headers use.
struct PyValue {
  enum class Kind { string, boolean, none, integer, sequence };
  Kind kind = Kind::none;
  std::string text;               // string
  bool flag = false;              // boolean
  long long integer = 0;          // integer
  std::vector<PyValue> elements;  // sequence (tuple or list)
  std::vector<std::string> keys;  // only for the top-level dict: keys[i] names elements[i]
};

// Parses the header dict. Grammar (whitespace allowed between tokens, trailing commas allowed):
//   dict  := '{' [ str ':' value { ',' str ':' value } ] '}'
//   value := str | 'True' | 'False' | 'None' | int | '(' values ')' | '[' values ']'
class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& header) : path_(path), text_(header) {}

  PyValue parse_dict() {
    PyValue dict;
    dict.kind = PyValue::Kind::sequence;
    skip_space();
    expect('{', "the header to start with '{'");
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      if (peek() != '\'' && peek() != '"') fail("expected a quoted key or '}'");
      std::string key = parse_string();
      for (const std::string& seen : dict.keys)
        if (seen == key) fail("duplicate key '" + key + "'");
      skip_space();
      expect(':', "':' after key '" + key + "'");
      dict.keys.push_back(key);
      dict.elements.push_back(parse_value(0));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') fail("expected ',' or '}' after the value of '" + key + "'");
    }
    ++pos_;  // '}'
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    return dict;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    std::string shown = text_;
    while (!shown.empty() && (shown.back() == ' ' || shown.back() == '\n')) shown.pop_back();
    if (shown.size() > 160) shown = shown.substr(0, 160) + "...";
    throw NpyError(
        path_, "malformed header dict: " + problem + " at offset " + std::to_string(pos_) + " in \"" + shown + "\"");
  }

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  void expect(char c, const std::string& what) {
    if (peek() != c) fail("expected " + what);
    ++pos_;
  }

  bool consume_word(const char* word) {
    const std::size_t n = std::strlen(word);
    if (text_.compare(pos_, n, word) != 0) return false;
    const char next = pos_ + n < text_.size() ? text_[pos_ + n] : '\0';
    if (std::isalnum(static_cast<unsigned char>(next)) || next == '_') return false;
    pos_ += n;
    return true;
  }

  std::string parse_string() {
    const char quote = text_[pos_++];
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == quote) return out;
      if (c == '\\') {
        if (pos_ >= text_.size()) fail("unterminated string");
        out += text_[pos_++];  // dtype strings never need more than a literal escape
      } else {
        out += c;
      }
    }
  }

  PyValue parse_value(int depth) {
    if (depth > 32) fail("nesting too deep");
    skip_space();
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = PyValue::Kind::string;
      v.text = parse_string();
    } else if (consume_word("True")) {
      v.kind = PyValue::Kind::boolean;
      v.flag = true;
    } else if (consume_word("False")) {
      v.kind = PyValue::Kind::boolean;
      v.flag = false;
    } else if (consume_word("None")) {
      v.kind = PyValue::Kind::none;
    } else if (c == '(' || c == '[') {
      const char close = c == '(' ? ')' : ']';
      ++pos_;
      v.kind = PyValue::Kind::sequence;
      for (;;) {
        skip_space();
        if (peek() == close) break;
        v.elements.push_back(parse_value(depth + 1));
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() != close) fail(std::string("expected ',' or '") + close + "'");
      }
      ++pos_;
    } else if (c == '-' || c == '+' || (c >= '0' && c <= '9')) {
      v.kind = PyValue::Kind::integer;
      const bool negative = c == '-';
      if (c == '-' || c == '+') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected digits");
      unsigned long long magnitude = 0;
      while (peek() >= '0' && peek() <= '9') {
        const unsigned digit = static_cast<unsigned>(peek() - '0');
        if (magnitude > (static_cast<unsigned long long>(std::numeric_limits<long long>::max()) - digit) / 10)
          fail("integer too large");
        magnitude = magnitude * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L') ++pos_;  // Python 2 long suffix, written by old numpy versions
      v.integer = negative ? -static_cast<long long>(magnitude) : static_cast<long long>(magnitude);
    } else {
      fail("unexpected character '" + std::string(1, c) + "'");
    }
    return v;
  }

  const std::string& path_;
  const std::string& text_;
  std::size_t pos_ = 0;
};

struct FileCloser {
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

inline std::vector<unsigned char> read_file_bytes(const std::string& path) {
  errno = 0;
  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (!file) throw NpyError(path, std::string("cannot open for reading: ") + std::strerror(errno));
  std::vector<unsigned char> bytes;
  unsigned char buffer[1 << 16];
  for (;;) {
    const std::size_t got = std::fread(buffer, 1, sizeof buffer, file.get());
    bytes.insert(bytes.end(), buffer, buffer + got);
    if (got < sizeof buffer) break;
  }
  if (std::ferror(file.get())) throw NpyError(path, "read error");
  return bytes;
}

inline void write_file_bytes(const std::string& path, const std::string& header, const void* data,
                             std::size_t data_bytes) {
  errno = 0;
  FilePtr file(std::fopen(path.c_str(), "wb"));
  if (!file) throw NpyError(path, std::string("cannot open for writing: ") + std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), file.get()) == header.size();
  if (ok && data_bytes > 0) ok = std::fwrite(data, 1, data_bytes, file.get()) == data_bytes;
  std::FILE* raw = file.release();
  if (std::fclose(raw) != 0) ok = false;
  if (!ok) throw NpyError(path, "write error (disk full?)");
}

// The bytes before the data: magic, version, header length, padded dict. Version 1.0 unless the
// header does not fit a uint16 length.
inline std::string make_header(const std::string& dtype, const std::vector<index_t>& shape) {
  std::string dict = "{'descr': '" + dtype + "', 'fortran_order': False, 'shape': (";
  for (std::size_t d = 0; d < shape.size(); ++d) dict += (d ? ", " : "") + std::to_string(shape[d]);
  if (shape.size() == 1) dict += ',';
  dict += "), }";
  // numpy pads the whole preamble + header to a multiple of 64 bytes so the data is aligned.
  const std::size_t alignment = 64;
  std::size_t preamble = 10;
  std::size_t total = (preamble + dict.size() + 1 + alignment - 1) / alignment * alignment;
  if (total - preamble > 0xFFFF) {
    preamble = 12;
    total = (preamble + dict.size() + 1 + alignment - 1) / alignment * alignment;
  }
  const std::size_t header_len = total - preamble;
  dict.append(header_len - dict.size() - 1, ' ');
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(preamble == 10 ? 1 : 2);
  out += '\0';
  for (std::size_t b = 0; b < preamble - 8; ++b) out += static_cast<char>((header_len >> (8 * b)) & 0xFF);
  return out + dict;
}

inline std::vector<index_t> checked_shape(const std::string& path, const std::vector<index_t>& shape) {
  for (index_t extent : shape)
    if (extent < 0) throw NpyError(path, "negative extent in shape " + shape_string(shape));
  return shape;
}

}  // namespace npy_detail

/// One array read from a .npy file. Exactly one of f32 / i32 holds the elements (C order).
struct NpyArray {
  std::string path;               ///< the file it came from, used in error messages; may be empty
  std::string dtype;              ///< as stored in the file: "<f4", "<i4" or "<f8" (narrowed into f32)
  std::vector<index_t> shape;     ///< empty for a 0-d (scalar) array
  std::vector<float> f32;         ///< elements when dtype is "<f4" or "<f8"
  std::vector<std::int32_t> i32;  ///< elements when dtype is "<i4"

  /// True when the elements are in f32 ("<f4", or "<f8" narrowed).
  bool is_float() const noexcept { return dtype == "<f4" || dtype == "<f8"; }
  /// True when the elements are in i32.
  bool is_int32() const noexcept { return dtype == "<i4"; }
  /// Number of dimensions (0 for a scalar).
  std::size_t rank() const noexcept { return shape.size(); }
  /// Number of elements.
  index_t numel() const noexcept {
    index_t n = 1;
    for (index_t extent : shape) n *= extent;
    return n;
  }
  /// The shape as "[2, 3]", for messages.
  std::string shape_string() const { return npy_detail::shape_string(shape); }

  /// The float elements as a rank-R view. `dims` names the expected dimensions for the message,
  /// e.g. view_f32<4>("B,T,H,P") on a [2, 3] array throws
  ///   x.npy: expected rank 4 [B,T,H,P], got shape [2, 3]
  template <std::size_t R>
  TensorView<const float, R> view_f32(const std::string& dims = "") const {
    require_dtype(is_float(), "float32");
    return TensorView<const float, R>(f32.data(), checked_extents<R>(dims));
  }

  /// Same, and every extent must equal `expected` (an extent of -1 accepts any size):
  ///   x.npy: expected shape [B,T,H,P] = [2, 64, 4, 16], got [2, 64, 3, 16]
  template <std::size_t R>
  TensorView<const float, R> view_f32(const std::string& dims, const std::array<index_t, R>& expected) const {
    require_dtype(is_float(), "float32");
    return TensorView<const float, R>(f32.data(), checked_extents<R>(dims, &expected));
  }

  /// The int32 elements as a rank-R view; the same checks as view_f32.
  template <std::size_t R>
  TensorView<const std::int32_t, R> view_i32(const std::string& dims = "") const {
    require_dtype(is_int32(), "int32");
    return TensorView<const std::int32_t, R>(i32.data(), checked_extents<R>(dims));
  }

 private:
  void require_dtype(bool ok, const char* wanted) const {
    if (!ok) throw NpyError(path, std::string("expected ") + wanted + " data, the array has dtype '" + dtype + "'");
  }

  template <std::size_t R>
  std::array<index_t, R> checked_extents(const std::string& dims,
                                         const std::array<index_t, R>* expected = nullptr) const {
    const std::size_t stored = is_int32() ? i32.size() : f32.size();
    if (stored != static_cast<std::size_t>(numel()))
      throw NpyError(path, "holds " + std::to_string(stored) + " elements, its shape " + shape_string() + " needs " +
                               std::to_string(numel()));
    const std::string label = dims.empty() ? std::string() : " [" + dims + "]";
    if (shape.size() != R)
      throw NpyError(path, "expected rank " + std::to_string(R) + label + ", got shape " + shape_string());
    std::array<index_t, R> extents{};
    bool matches = true;
    for (std::size_t d = 0; d < R; ++d) {
      extents[d] = shape[d];
      if (expected && (*expected)[d] >= 0 && (*expected)[d] != shape[d]) matches = false;
    }
    if (!matches)
      throw NpyError(path, "expected shape" + label + " = " + expected_shape_to_string(*expected) + ", got " +
                               shape_string());
    return extents;
  }
};

/// Reads a whole .npy file. Throws NpyError naming the file and the problem.
inline NpyArray read_npy(const std::string& path, NpyF64 f64 = NpyF64::reject) {
  const std::vector<unsigned char> bytes = npy_detail::read_file_bytes(path);
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (bytes.size() < 6 || std::memcmp(bytes.data(), magic, 6) != 0) {
    std::ostringstream got;
    for (std::size_t i = 0; i < std::min<std::size_t>(bytes.size(), 6); ++i) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", bytes[i]);
      got << hex;
    }
    throw NpyError(path, "not a .npy file: bad magic (expected \\x93NUMPY, got \"" + got.str() + "\", file size " +
                             std::to_string(bytes.size()) + " bytes)");
  }
  if (bytes.size() < 8) throw NpyError(path, "truncated header: the file ends after the magic bytes");
  const int major = bytes[6], minor = bytes[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    throw NpyError(path, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                             " (supported: 1.0, 2.0, 3.0)");
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + len_bytes) throw NpyError(path, "truncated header: the file ends inside the header length");
  std::size_t header_len = 0;
  for (std::size_t b = 0; b < len_bytes; ++b) header_len |= static_cast<std::size_t>(bytes[8 + b]) << (8 * b);
  const std::size_t data_start = 8 + len_bytes + header_len;
  if (data_start > bytes.size())
    throw NpyError(path, "truncated header: it says " + std::to_string(header_len) + " header bytes, the file has " +
                             std::to_string(bytes.size() - 8 - len_bytes));
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + 8 + len_bytes, header_len);

  const npy_detail::PyValue dict = npy_detail::HeaderParser(path, header).parse_dict();
  auto lookup = [&](const char* key) -> const npy_detail::PyValue& {
    for (std::size_t i = 0; i < dict.keys.size(); ++i)
      if (dict.keys[i] == key) return dict.elements[i];
    std::string shown = header;
    while (!shown.empty() && (shown.back() == ' ' || shown.back() == '\n')) shown.pop_back();
    throw NpyError(path, std::string("malformed header dict: missing key '") + key + "' in \"" + shown + "\"");
  };
  const npy_detail::PyValue& descr = lookup("descr");
  const npy_detail::PyValue& fortran = lookup("fortran_order");
  const npy_detail::PyValue& shape_value = lookup("shape");

  NpyArray array;
  array.path = path;
  if (descr.kind != npy_detail::PyValue::Kind::string)
    throw NpyError(path, "unsupported dtype: structured (record) dtypes are not supported, only '<f4', '<i4', '<f8'");
  array.dtype = descr.text;
  const std::string& dt = array.dtype;
  if (!dt.empty() && dt[0] == '>')
    throw NpyError(path, "unsupported dtype '" + dt + "': big-endian data is not supported (only little-endian '<')");
  std::size_t item_size = 0;
  if (dt == "<f4" || dt == "<i4") {
    item_size = 4;
  } else if (dt == "<f8") {
    if (f64 == NpyF64::reject)
      throw NpyError(path,
                     "unsupported dtype '<f8' (float64) where float32 is expected; convert the file to '<f4' "
                     "or read it with NpyF64::narrow_to_f32");
    item_size = 8;
  } else {
    throw NpyError(path, "unsupported dtype '" + dt + "' (supported: '<f4', '<i4', '<f8')");
  }

  if (fortran.kind != npy_detail::PyValue::Kind::boolean)
    throw NpyError(path, "malformed header dict: 'fortran_order' must be True or False");
  if (fortran.flag)
    throw NpyError(path, "Fortran-order arrays are not supported (save a C-order array, e.g. np.ascontiguousarray)");

  if (shape_value.kind != npy_detail::PyValue::Kind::sequence)
    throw NpyError(path, "malformed header dict: 'shape' must be a tuple of integers");
  index_t count = 1;
  const index_t max_count = std::numeric_limits<index_t>::max() / 8;
  for (const npy_detail::PyValue& extent : shape_value.elements) {
    if (extent.kind != npy_detail::PyValue::Kind::integer || extent.integer < 0)
      throw NpyError(path, "malformed header dict: 'shape' must be a tuple of non-negative integers");
    array.shape.push_back(static_cast<index_t>(extent.integer));
    if (extent.integer > 0 && count > max_count / static_cast<index_t>(extent.integer))
      throw NpyError(path, "shape " + array.shape_string() + " is too large");
    count *= static_cast<index_t>(extent.integer);
  }

  const std::size_t expected_bytes = static_cast<std::size_t>(count) * item_size;
  const std::size_t actual_bytes = bytes.size() - data_start;
  if (actual_bytes < expected_bytes)
    throw NpyError(path, "truncated data: shape " + array.shape_string() + " of '" + dt + "' needs " +
                             std::to_string(expected_bytes) + " bytes, the file has " + std::to_string(actual_bytes));
  if (actual_bytes > expected_bytes)
    throw NpyError(path, "corrupt file: shape " + array.shape_string() + " of '" + dt + "' needs " +
                             std::to_string(expected_bytes) + " bytes, the file has " + std::to_string(actual_bytes) +
                             " (" + std::to_string(actual_bytes - expected_bytes) + " trailing bytes)");

  const unsigned char* data = bytes.data() + data_start;
  const auto n = static_cast<std::size_t>(count);
  if (dt == "<f4") {
    array.f32.resize(n);
    npy_detail::copy_little_endian(array.f32.data(), data, n, 4);
  } else if (dt == "<i4") {
    array.i32.resize(n);
    npy_detail::copy_little_endian(array.i32.data(), data, n, 4);
  } else {
    std::vector<double> wide(n);
    npy_detail::copy_little_endian(wide.data(), data, n, 8);
    array.f32.assign(wide.begin(), wide.end());
  }
  return array;
}

///@{
/// Writes contiguous C-order data with the given shape ('<f4' or '<i4').
inline void write_npy(const std::string& path, const std::vector<index_t>& shape, const float* data) {
  const std::vector<index_t> dims = npy_detail::checked_shape(path, shape);
  index_t n = 1;
  for (index_t extent : dims) n *= extent;
  if (n > 0 && data == nullptr)
    throw NpyError(path, "cannot write: null data pointer for shape " + npy_detail::shape_string(dims));
  std::vector<float> little(static_cast<std::size_t>(n));
  if (n > 0) npy_detail::copy_little_endian(little.data(), data, little.size(), 4);
  npy_detail::write_file_bytes(path, npy_detail::make_header("<f4", dims), little.data(), little.size() * 4);
}

inline void write_npy(const std::string& path, const std::vector<index_t>& shape, const std::int32_t* data) {
  const std::vector<index_t> dims = npy_detail::checked_shape(path, shape);
  index_t n = 1;
  for (index_t extent : dims) n *= extent;
  if (n > 0 && data == nullptr)
    throw NpyError(path, "cannot write: null data pointer for shape " + npy_detail::shape_string(dims));
  std::vector<std::int32_t> little(static_cast<std::size_t>(n));
  if (n > 0) npy_detail::copy_little_endian(little.data(), data, little.size(), 4);
  npy_detail::write_file_bytes(path, npy_detail::make_header("<i4", dims), little.data(), little.size() * 4);
}

///@}
/// Writes a view of any strides (float or int32) as a C-order array of the view's shape.
template <class T, std::size_t R>
void write_npy(const std::string& path, const TensorView<T, R>& view) {
  using Value = std::remove_const_t<T>;
  static_assert(std::is_same_v<Value, float> || std::is_same_v<Value, std::int32_t>,
                "write_npy supports float and int32 views");
  const std::vector<index_t> shape(view.shape().begin(), view.shape().end());
  const index_t n = view.numel();
  if (n > 0 && view.data() == nullptr)
    throw NpyError(path, "cannot write: view " + npy_detail::shape_string(shape) + " has a null data pointer");
  std::vector<Value> flat(static_cast<std::size_t>(n));
  std::array<index_t, R> idx{};
  for (index_t i = 0; i < n; ++i) {
    index_t offset = 0;
    for (std::size_t d = 0; d < R; ++d) offset += idx[d] * view.stride(d);
    flat[static_cast<std::size_t>(i)] = view.data()[offset];
    for (std::size_t d = R; d-- > 0;) {  // advance the C-order multi-index
      if (++idx[d] < view.size(d)) break;
      idx[d] = 0;
    }
  }
  write_npy(path, shape, flat.data());
}

/// Writes an owning tensor (same as its view()).
template <class T, std::size_t R>
void write_npy(const std::string& path, const Tensor<T, R>& tensor) {
  write_npy(path, tensor.view());
}

/// Writes an array read earlier (or built by hand); '<f8' arrays are written as '<f4'.
inline void write_npy(const std::string& path, const NpyArray& array) {
  if (array.is_int32()) {
    if (array.i32.size() != static_cast<std::size_t>(array.numel()))
      throw NpyError(path, "cannot write: shape " + array.shape_string() + " needs " + std::to_string(array.numel()) +
                               " elements, the array has " + std::to_string(array.i32.size()));
    write_npy(path, array.shape, array.i32.data());
  } else if (array.is_float()) {
    if (array.f32.size() != static_cast<std::size_t>(array.numel()))
      throw NpyError(path, "cannot write: shape " + array.shape_string() + " needs " + std::to_string(array.numel()) +
                               " elements, the array has " + std::to_string(array.f32.size()));
    write_npy(path, array.shape, array.f32.data());
  } else {
    throw NpyError(path, "cannot write dtype '" + array.dtype + "' (supported: '<f4', '<i4')");
  }
}

}  // namespace seqmix
