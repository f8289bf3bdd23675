// How a family binds its launchers (pyext/<family>.cpp). Python calls a
// launcher as
//     _C.<backend>.<launcher>(dtype, geometry, tensor..., [stream])
// with a DType member, its Python geometry object (a dataclass whose fields
// have the C++ struct's names), torch tensors (None for an absent optional
// one) and, for the cuda backend, the stream handle. The conversions here
// read tensors through their Python methods (data_ptr(), stride()), so _C
// still needs no libtorch; a launcher's non-ok Status becomes a
// RuntimeError carrying status_message().
//
// A family file is then its geometry's field list and one line per launcher:
//     template <>
//     struct PyStruct<Pool2dGeometry> : std::true_type {
//       static Pool2dGeometry read(const Fields& f) { return {CNNK_FIELD(N), ...}; }
//     };
//     CNNK_BINDINGS(pool2d, m) { CNNK_LAUNCHER(m, max_pool2d_forward); ... }
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cnnk/common.h"

#if defined(CNNK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace cnnk::pyext {

namespace py = pybind11;

// Reads a C++ struct's fields from the attributes of the same names of a
// Python object. In recording mode (for the field list _C exports) it reads
// nothing and notes the names.
class Fields {
 public:
  explicit Fields(py::handle src) : src_(src) {}
  explicit Fields(std::vector<std::string>* names) : names_(names) {}

  // One field, converted to whatever the field's type is.
  class Value {
   public:
    Value(const Fields& fields, const char* name) : fields_(fields), name_(name) {}
    template <typename T>
    operator T() const {
      if (fields_.names_ != nullptr) {
        fields_.names_->push_back(name_);
        return T{};
      }
      const py::object value = fields_.src_.attr(name_);
      if constexpr (std::is_enum_v<T>)  // a Python IntEnum or int holding the code
        return static_cast<T>(value.cast<int>());
      else
        return value.cast<T>();
    }

   private:
    const Fields& fields_;
    const char* name_;
  };

  Value operator()(const char* name) const { return Value(*this, name); }

 private:
  py::handle src_;
  std::vector<std::string>* names_ = nullptr;
};

// Specialised (with read(const Fields&)) for every struct Python passes by
// field name: pyext/<family>.cpp lists the fields once, in declaration order,
// as designated initializers, so the compiler checks every name and the order.
template <typename T>
struct PyStruct : std::false_type {};

#define CNNK_FIELD(name) .name = f(#name)

// Number of fields of an aggregate (it can be brace-initialised from that
// many values and no more): the check that a field list misses no field.
struct AnyValue {
  template <typename T>
  operator T() const;
};
template <typename T, typename... A>
constexpr std::size_t field_count() {
  if constexpr (requires { T{A{}..., AnyValue{}}; })
    return field_count<T, A..., AnyValue>();
  else
    return sizeof...(A);
}

// The field names of a PyStruct, checked against the struct's field count.
template <typename T>
std::vector<std::string> field_names() {
  std::vector<std::string> names;
  PyStruct<T>::read(Fields(&names));
  if (names.size() != field_count<T>())
    throw std::logic_error("a PyStruct field list misses fields of its struct");
  return names;
}

// Python-side type of each launcher parameter: the same, except the stream,
// which arrives as torch's integer handle.
template <typename T>
struct PyArg {
  using type = T;
  static T to(T v) { return v; }
};
#if defined(CNNK_WITH_CUDA)
template <>
struct PyArg<cudaStream_t> {
  using type = std::uintptr_t;
  static cudaStream_t to(std::uintptr_t v) { return reinterpret_cast<cudaStream_t>(v); }
};
#endif

template <typename... A>
void def_launcher(py::module_& m, const char* name, Status (*launcher)(A...)) {
  const std::string where = m.attr("__name__").cast<std::string>() + "." + name;
  m.def(
      name,
      [launcher, where](typename PyArg<A>::type... args) {
        const Status s = launcher(PyArg<A>::to(args)...);
        if (s != Status::ok)
          throw std::runtime_error(where + ": " + status_message(s) + " (status " +
                                   std::to_string(static_cast<int>(s)) + ")");
      },
      py::call_guard<py::gil_scoped_release>());
}

// Where a family's bindings go: the two launcher submodules (cuda is None in
// a build without CUDA) and _C.struct_fields.
struct Modules {
  py::module_ cpu;
  py::object cuda;
  py::dict struct_fields;

  // Binds a launcher that both backends have, under one name.
  template <typename CpuLauncher, typename CudaLauncher>
  void launcher(const char* name, CpuLauncher cpu_launcher, CudaLauncher cuda_launcher) {
    def_launcher(cpu, name, cpu_launcher);
    if constexpr (!std::is_null_pointer_v<CudaLauncher>) {
      py::module_ cuda_module = cuda.cast<py::module_>();
      def_launcher(cuda_module, name, cuda_launcher);
    }
  }

  // Exports a PyStruct's field list as _C.struct_fields[name].
  template <typename T>
  void structure(const char* name) {
    struct_fields[name] = py::tuple(py::cast(field_names<T>()));
  }
};

#if defined(CNNK_WITH_CUDA)
#define CNNK_CUDA_LAUNCHER(name) &cuda::name
#else
#define CNNK_CUDA_LAUNCHER(name) nullptr
#endif
// Binds cpu::name and (in a CUDA build) cuda::name as _C.cpu.name / _C.cuda.name.
#define CNNK_LAUNCHER(m, name) (m).launcher(#name, &cpu::name, CNNK_CUDA_LAUNCHER(name))

// Every family's binding function, collected before _C's init runs.
using Bindings = void (*)(Modules&);
std::vector<Bindings>& all_bindings();
struct AddBindings {
  explicit AddBindings(Bindings b) { all_bindings().push_back(b); }
};
#define CNNK_BINDINGS(family, m)                                          \
  static void bind_##family(::cnnk::pyext::Modules& m);                   \
  static const ::cnnk::pyext::AddBindings family##_bindings{&bind_##family}; \
  static void bind_##family(::cnnk::pyext::Modules& m)

}  // namespace cnnk::pyext

namespace pybind11::detail {

// The result of calling src.name() (name an interned string), or a null
// object (the error cleared) where src has no such method or it raised.
inline object call_method(handle src, PyObject* name) {
  PyObject* result = PyObject_CallMethodNoArgs(src.ptr(), name);
  if (result == nullptr) PyErr_Clear();
  return reinterpret_steal<object>(result);
}

// Interned method names: a launcher reads several tensors per call, and each
// microsecond of conversion shows on small ops.
inline PyObject* stride_name() {
  static PyObject* const name = PyUnicode_InternFromString("stride");
  return name;
}
inline PyObject* data_ptr_name() {
  static PyObject* const name = PyUnicode_InternFromString("data_ptr");
  return name;
}

// src.data_ptr() as a pointer; false where src has none.
inline bool read_data_pointer(handle src, void** data) {
  const object address = call_method(src, data_ptr_name());
  if (!address || !PyLong_Check(address.ptr())) return false;
  *data = PyLong_AsVoidPtr(address.ptr());
  return true;
}

// A tensor argument: a torch.Tensor (read through data_ptr() and stride())
// of the launcher's rank, or None for an absent optional tensor.
template <int R>
struct type_caster<cnnk::TensorN<R>> {
  PYBIND11_TYPE_CASTER(cnnk::TensorN<R>, const_name("Tensor | None"));
  bool load(handle src, bool) {
    value = {};
    if (src.is_none()) return true;
    const object strides = call_method(src, stride_name());
    if (!strides || !PyTuple_Check(strides.ptr())) return false;
    const Py_ssize_t rank = PyTuple_GET_SIZE(strides.ptr());
    if (rank != R)
      throw type_error("expected a " + std::to_string(R) + "-D tensor, got " +
                       std::to_string(rank) + "-D");
    int64_t stride[R];
    for (int i = 0; i < R; ++i) {
      stride[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides.ptr(), i));
      if (stride[i] == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
    }
    if constexpr (R == 1) {
      value.stride = stride[0];
    } else if constexpr (R == 4) {
      value.stride = {stride[0], stride[1], stride[2], stride[3]};
    } else {
      for (int i = 0; i < R; ++i) value.stride[i] = stride[i];
    }
    return read_data_pointer(src, &value.data);
  }
};

// Scratch memory: a torch.Tensor whose bytes the launcher may use.
template <>
struct type_caster<cnnk::Workspace> {
  PYBIND11_TYPE_CASTER(cnnk::Workspace, const_name("Tensor"));
  bool load(handle src, bool) {
    if (!hasattr(src, "nbytes") || !read_data_pointer(src, &value.data)) return false;
    value.bytes = src.attr("nbytes").cast<std::size_t>();
    return true;
  }
};

// A geometry: any Python object with the struct's fields as attributes.
template <typename T>
struct type_caster<T, std::enable_if_t<cnnk::pyext::PyStruct<T>::value>> {
  PYBIND11_TYPE_CASTER(T, const_name("geometry"));
  bool load(handle src, bool) {
    value = cnnk::pyext::PyStruct<T>::read(cnnk::pyext::Fields(src));
    return true;
  }
};

}  // namespace pybind11::detail
