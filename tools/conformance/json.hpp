// A small JSON reader for case.json files (SPEC section 7). No dependencies.
//
// Accepts RFC 8259 JSON: objects, arrays, strings with every escape (\uXXXX including surrogate
// pairs, decoded to UTF-8), numbers, true, false, null. As an extension it also accepts the
// tokens NaN, Infinity and -Infinity, because Python's json.dump writes them by default, and
// skips a leading UTF-8 byte-order mark. Objects keep their keys in file order; a duplicate key
// is an error (a case.json with two "tol" entries is a mistake, not something to resolve
// silently). Errors throw JsonError with "<source>:<line>:<column>: <problem>".
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace seqmix::conformance {

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { null, boolean, number, string, array, object };

  Json() = default;  // null

  static Json from_bool(bool value) {
    Json j;
    j.type_ = Type::boolean;
    j.bool_ = value;
    return j;
  }
  static Json from_number(double value) {
    Json j;
    j.type_ = Type::number;
    j.number_ = value;
    return j;
  }
  static Json from_string(std::string value) {
    Json j;
    j.type_ = Type::string;
    j.string_ = std::move(value);
    return j;
  }
  static Json from_array(std::vector<Json> items) {
    Json j;
    j.type_ = Type::array;
    j.values_ = std::move(items);
    return j;
  }
  static Json empty_object() {
    Json j;
    j.type_ = Type::object;
    return j;
  }

  // Parses a whole document; `source` (a file name) prefixes error messages.
  static Json parse(std::string_view text, const std::string& source = "<json>");
  static Json parse_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw JsonError(path + ": cannot open for reading");
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) throw JsonError(path + ": read error");
    return parse(text.str(), path);
  }

  Type type() const noexcept { return type_; }
  static const char* type_name(Type type) noexcept {
    switch (type) {
      case Type::null:
        return "null";
      case Type::boolean:
        return "a bool";
      case Type::number:
        return "a number";
      case Type::string:
        return "a string";
      case Type::array:
        return "an array";
      case Type::object:
        return "an object";
    }
    return "?";
  }
  const char* type_name() const noexcept { return type_name(type_); }

  bool is_null() const noexcept { return type_ == Type::null; }
  bool is_bool() const noexcept { return type_ == Type::boolean; }
  bool is_number() const noexcept { return type_ == Type::number; }
  bool is_string() const noexcept { return type_ == Type::string; }
  bool is_array() const noexcept { return type_ == Type::array; }
  bool is_object() const noexcept { return type_ == Type::object; }

  // Typed accessors; the wrong type throws JsonError ("expected a bool, got a number").
  bool as_bool() const {
    require(Type::boolean);
    return bool_;
  }
  double as_number() const {
    require(Type::number);
    return number_;
  }
  const std::string& as_string() const {
    require(Type::string);
    return string_;
  }
  // Array elements, or object values in key order.
  const std::vector<Json>& items() const {
    if (type_ != Type::array && type_ != Type::object)
      throw JsonError(std::string("expected an array or an object, got ") + type_name());
    return values_;
  }
  // Object keys in file order (keys()[i] names items()[i]).
  const std::vector<std::string>& keys() const {
    require(Type::object);
    return keys_;
  }
  std::size_t size() const { return items().size(); }

  // Object member, or nullptr when absent (or when this is not an object).
  const Json* find(std::string_view key) const {
    if (type_ != Type::object) return nullptr;
    for (std::size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] == key) return &values_[i];
    return nullptr;
  }
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  const Json& at(std::string_view key) const {
    require(Type::object);
    if (const Json* member = find(key)) return *member;
    throw JsonError("missing key \"" + std::string(key) + "\"");
  }
  const Json& at(std::size_t index) const {
    require(Type::array);
    if (index >= values_.size())
      throw JsonError("index " + std::to_string(index) + " out of range for an array of " +
                      std::to_string(values_.size()));
    return values_[index];
  }

  // Adds or replaces an object member (for building documents in code and tests).
  Json& set(const std::string& key, Json value) {
    require(Type::object);
    for (std::size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] == key) {
        values_[i] = std::move(value);
        return *this;
      }
    keys_.push_back(key);
    values_.push_back(std::move(value));
    return *this;
  }

  // Compact serialization (numbers with 17 significant digits); used in messages and tests.
  std::string dump() const {
    std::string out;
    dump_to(out);
    return out;
  }

 private:
  friend class JsonParser;

  void require(Type type) const {
    if (type_ != type) throw JsonError(std::string("expected ") + type_name(type) + ", got " + type_name());
  }

  static void dump_string(std::string& out, const std::string& s) {
    out += '"';
    for (const char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        default:
          if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out += ch;
          }
      }
    }
    out += '"';
  }

  void dump_to(std::string& out) const {
    switch (type_) {
      case Type::null:
        out += "null";
        break;
      case Type::boolean:
        out += bool_ ? "true" : "false";
        break;
      case Type::number: {
        if (std::isnan(number_)) {
          out += "NaN";
        } else if (std::isinf(number_)) {
          out += number_ > 0 ? "Infinity" : "-Infinity";
        } else {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%.17g", number_);
          out += buf;
        }
        break;
      }
      case Type::string:
        dump_string(out, string_);
        break;
      case Type::array:
        out += '[';
        for (std::size_t i = 0; i < values_.size(); ++i) {
          if (i) out += ',';
          values_[i].dump_to(out);
        }
        out += ']';
        break;
      case Type::object:
        out += '{';
        for (std::size_t i = 0; i < values_.size(); ++i) {
          if (i) out += ',';
          dump_string(out, keys_[i]);
          out += ':';
          values_[i].dump_to(out);
        }
        out += '}';
        break;
    }
  }

  Type type_ = Type::null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<std::string> keys_;  // object only
  std::vector<Json> values_;       // array elements or object values
};

// Recursive-descent parser over a string_view. Nesting is limited so that hostile input cannot
// overflow the stack.
class JsonParser {
 public:
  static constexpr int kMaxDepth = 256;

  JsonParser(std::string_view text, const std::string& source) : text_(text), source_(source) {}

  Json parse_document() {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // UTF-8 byte-order mark
    skip_space();
    if (pos_ >= text_.size()) fail("empty document");
    Json value = parse_value(0);
    skip_space();
    if (pos_ < text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const { fail_at(pos_, problem); }

  [[noreturn]] void fail_at(std::size_t at, const std::string& problem) const {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw JsonError(source_ + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + problem);
  }

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool at_end() const { return pos_ >= text_.size(); }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  bool consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  static std::string describe(char c) {
    if (c == '\0') return "end of input";
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "byte 0x%02x", static_cast<unsigned char>(c));
      return buf;
    }
    return std::string("'") + c + "'";
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    skip_space();
    const char c = peek();
    switch (c) {
      case '{':
        return parse_object(depth);
      case '[':
        return parse_array(depth);
      case '"':
        return Json::from_string(parse_string());
      case 't':
        if (consume("true")) return Json::from_bool(true);
        break;
      case 'f':
        if (consume("false")) return Json::from_bool(false);
        break;
      case 'n':
        if (consume("null")) return Json();
        break;
      case 'N':
        if (consume("NaN")) return Json::from_number(std::numeric_limits<double>::quiet_NaN());
        break;
      case 'I':
        if (consume("Infinity")) return Json::from_number(std::numeric_limits<double>::infinity());
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    }
    if (at_end()) fail("unexpected end of input, expected a value");
    fail("unexpected " + describe(c) + ", expected a value");
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json object = Json::empty_object();
    skip_space();
    if (peek() == '}') {
      ++pos_;
      return object;
    }
    for (;;) {
      skip_space();
      if (peek() != '"') fail("expected a string key, got " + describe(peek()));
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      for (const std::string& seen : object.keys_)
        if (seen == key) fail_at(key_pos, "duplicate key \"" + key + "\"");
      skip_space();
      if (peek() != ':') fail("expected ':' after key \"" + key + "\", got " + describe(peek()));
      ++pos_;
      Json value = parse_value(depth + 1);
      object.keys_.push_back(std::move(key));
      object.values_.push_back(std::move(value));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return object;
      }
      fail("expected ',' or '}' in object, got " + describe(peek()));
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    std::vector<Json> items;
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return Json::from_array(std::move(items));
    }
    for (;;) {
      items.push_back(parse_value(depth + 1));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return Json::from_array(std::move(items));
      }
      fail("expected ',' or ']' in array, got " + describe(peek()));
    }
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      value <<= 4;
      if (h >= '0' && h <= '9')
        value |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f')
        value |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F')
        value |= static_cast<unsigned>(h - 'A' + 10);
      else
        fail_at(pos_ - 1, "invalid hex digit " + describe(h) + " in \\u escape");
    }
    return value;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    const std::size_t start = pos_;
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) fail_at(start, "unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail_at(pos_ - 1, "unescaped control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) fail_at(start, "unterminated string");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // high surrogate: a low one must follow
            if (!consume("\\u")) fail("high surrogate \\u escape not followed by a low surrogate");
            const std::uint32_t low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("invalid low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired low surrogate in \\u escape");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          fail_at(pos_ - 1, "invalid escape \\" + std::string(1, e));
      }
    }
  }

  Json parse_number() {
    const std::size_t start = pos_;
    if (peek() == '-') {
      ++pos_;
      if (consume("Infinity")) return Json::from_number(-std::numeric_limits<double>::infinity());
    }
    auto digits = [&] {
      std::size_t n = 0;
      while (peek() >= '0' && peek() <= '9') ++pos_, ++n;
      return n;
    };
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') fail("leading zeros are not allowed in numbers");
    } else if (digits() == 0) {
      fail("expected digits in number");
    }
    if (peek() == '.') {
      ++pos_;
      if (digits() == 0) fail("expected digits after the decimal point");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) fail("expected digits in the exponent");
    }
    // from_chars is locale-independent (strtod would honour a ',' decimal separator).
    double value = 0.0;
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    const auto result = std::from_chars(first, last, value);
    if (result.ec == std::errc::result_out_of_range) {
      // Overflow becomes +-inf, underflow becomes +-0, as other JSON readers do.
      value = decimal_magnitude(std::string_view(first, static_cast<std::size_t>(last - first))) > 0
                  ? std::numeric_limits<double>::infinity()
                  : 0.0;
      if (*first == '-') value = -value;
    } else if (result.ec != std::errc() || result.ptr != last) {
      fail_at(start, "invalid number");
    }
    return Json::from_number(value);
  }

  // Roughly log10|x| of a valid JSON number lexeme: only its sign matters (overflow vs underflow).
  static long long decimal_magnitude(std::string_view lexeme) {
    std::size_t i = lexeme[0] == '-' ? 1 : 0;
    long long magnitude = 0;
    bool nonzero_seen = false;
    for (; i < lexeme.size() && lexeme[i] >= '0' && lexeme[i] <= '9'; ++i) {
      nonzero_seen = nonzero_seen || lexeme[i] != '0';
      if (nonzero_seen) ++magnitude;
    }
    if (i < lexeme.size() && lexeme[i] == '.') {
      for (++i; i < lexeme.size() && lexeme[i] >= '0' && lexeme[i] <= '9'; ++i) {
        if (nonzero_seen) continue;
        if (lexeme[i] != '0')
          nonzero_seen = true;
        else
          --magnitude;
      }
    }
    if (i < lexeme.size() && (lexeme[i] == 'e' || lexeme[i] == 'E')) {
      ++i;
      const bool negative = i < lexeme.size() && lexeme[i] == '-';
      if (i < lexeme.size() && (lexeme[i] == '-' || lexeme[i] == '+')) ++i;
      long long exponent = 0;
      for (; i < lexeme.size(); ++i)
        if (exponent < 1000000000) exponent = exponent * 10 + (lexeme[i] - '0');
      magnitude += negative ? -exponent : exponent;
    }
    return magnitude;
  }

  std::string_view text_;
  const std::string& source_;
  std::size_t pos_ = 0;
};

inline Json Json::parse(std::string_view text, const std::string& source) {
  return JsonParser(text, source).parse_document();
}

}  // namespace seqmix::conformance
