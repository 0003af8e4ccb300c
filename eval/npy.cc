#include "eval/npy.h"

#include "base/file.h"

namespace kvlab {

Status write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t n = 1;
  for (int64_t d : shape) {
    dict += std::to_string(d) + ",";
    n *= d;
  }
  dict += "), }";
  // Magic, version 1.0, header length; the header is padded with spaces to a multiple of 64
  // bytes (including the 10 leading bytes) and ends with a newline.
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += char(1);
  out += char(0);
  out += char(dict.size() & 0xff);
  out += char(dict.size() >> 8);
  out += dict;
  out.append(reinterpret_cast<const char*>(data), size_t(n) * sizeof(float));
  return write_file_atomic(path, out);
}

}  // namespace kvlab
