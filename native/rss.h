#include <stddef.h>
#include <stdint.h>
uint32_t yas_toeplitz(const char *key, size_t keylen, const char *data, size_t len);
