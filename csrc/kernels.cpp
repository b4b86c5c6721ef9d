// The cells' pointwise kernels for one instruction-set level (RNNCORE_ISA, set by CMake), and the
// list of every cell: a cell's code is its place in `Cells`.
#include <iterator>
#include <type_traits>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/lstm_ln.h"
#include "cells/rnn.h"
#include "smallgemm.h"

namespace rnncore {
namespace RNNCORE_NS {

template <class... C>
struct CellList {
  static constexpr int size = sizeof...(C);
};
// Every cell, in the order of its code. A new cell goes at the end (codes are not stored anywhere,
// but keeping them stable keeps old tapes and tests readable).
using Cells = CellList<SimpleRNNCell<Tanh>, SimpleRNNCell<Relu>, LSTMCell<false>, GRUCell<false>, GRUCell<true>,
                       LSTMCell<true>, LayerNormLSTMCell>;

// A cell's optional members: present or the default.
template <class C, class = void>
struct NumParams : std::integral_constant<int, int(std::size(C::params))> {};
template <class C>
struct NumParams<C, std::void_t<decltype(C::num_params)>> : std::integral_constant<int, C::num_params> {};

#define RNNCORE_HOOK(hook)                                                                      \
  template <class C, class T, class = void>                                                     \
  struct Has_##hook {                                                                           \
    static constexpr void (*get())(const AllSteps<T>&) { return nullptr; }                      \
  };                                                                                            \
  template <class C, class T>                                                                   \
  struct Has_##hook<C, T, std::void_t<decltype(&C::template hook<T>)>> {                        \
    static constexpr void (*get())(const AllSteps<T>&) { return &C::template hook<T>; }         \
  };
RNNCORE_HOOK(project_done)
RNNCORE_HOOK(input_grads)
RNNCORE_HOOK(param_grads)
#undef RNNCORE_HOOK

template <class Cell, class T>
CellSpec<T> make_spec() {
  CellSpec<T> s;
  s.name = Cell::name;
  s.gates = Cell::gates;
  s.has_c = Cell::has_c;
  s.num_params = NumParams<Cell>::value;
  static_assert(NumParams<Cell>::value < kMaxParams, "the projection's W_hh needs a place");
  for (int k = 0; k < s.num_params; ++k) s.params[k] = Cell::params[k];
  s.can_project = Cell::can_project;
  s.torch = Cell::torch;
  s.keras = Cell::keras;
  s.onnx = Cell::onnx;
  s.extra_cols = Cell::extra_cols;
  s.extra_scalars = Cell::extra_scalars;
  s.keeps_cache = Cell::keeps_cache;
  s.separate_rec_grad = Cell::separate_rec_grad;
  s.grad_cols = Cell::grad_cols;
  s.partial_cols = Cell::partial_cols;
  s.whole_rows = Cell::whole_rows;
  s.num_blocks = Cell::num_blocks;
  for (int k = 0; k < Cell::num_blocks; ++k) s.blocks[k] = Cell::blocks[k];
  s.forward = &Cell::template forward<T>;
  s.backward = &Cell::template backward<T>;
  s.project_done = Has_project_done<Cell, T>::get();
  s.input_grads = Has_input_grads<Cell, T>::get();
  s.param_grads = Has_param_grads<Cell, T>::get();
  return s;
}

template <class T, class... C>
CellSpec<T> spec_of(int code, CellList<C...>) {
  CellSpec<T> out;  // name null: no such cell
  int k = 0;
  ((k++ == code ? (void)(out = make_spec<C, T>()) : (void)0), ...);
  return out;
}

template <class T>
Kernels<T> kernels(int code) {
  Kernels<T> k;
  k.cell = spec_of<T>(code, Cells{});
  k.step.packed_size = &SmallGemm<T>::packed_size;
  k.step.pack = &SmallGemm<T>::pack;
  k.step.gemm = &SmallGemm<T>::gemm;
  k.step.gemm_nt = &SmallGemm<T>::gemm_nt;
  k.step.gemm_nn = &SmallGemm<T>::gemm_nn;
  k.step.bias_grad = &bias_grad<T>;
  return k;
}

template Kernels<float> kernels<float>(int);
template Kernels<double> kernels<double>(int);

}  // namespace RNNCORE_NS
}  // namespace rnncore
